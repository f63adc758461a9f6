//! The Debian package as an operator gets it: `cargo xtask dist` builds it for real (release binaries, lb-dist,
//! cargo-deb), `dpkg-deb -x` extracts it into a temporary root, and what it would install is run and checked there:
//! the binaries, the systemd unit (`systemd-analyze verify`), the conffile, a man page and completions for every
//! command the clap definitions have, the dashboard and the alert rules.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use lb_tests::harness::guards::TempDir;
use lb_tests::harness::netns::run_cmd;
use lb_userspace::cli::{lbctl, lbd};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An extracted package: the .deb, its control files and its file tree.
struct Package {
    deb: PathBuf,
    control: PathBuf,
    root: PathBuf,
}

impl Package {
    fn build(dir: &Path) -> Package {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // --no-setup: the suite runs after `cargo xtask setup`, which installs cargo-deb and dpkg-dev. The package
        // goes where `cargo xtask dist` always puts it: cargo-deb deletes lbd_*.deb there on every run anyway.
        let out = run_cmd(Command::new(cargo).current_dir(workspace()).args([
            "xtask",
            "dist",
            "--no-setup",
        ]));
        let deb = out
            .lines()
            .rev()
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("cargo xtask dist named no .deb:\n{out}"));
        assert!(deb.is_file(), "{}", deb.display());
        let p = Package {
            deb,
            control: dir.join("DEBIAN"),
            root: dir.join("root"),
        };
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&p.deb).arg(&p.root));
        run_cmd(
            Command::new("dpkg-deb")
                .arg("-e")
                .arg(&p.deb)
                .arg(&p.control),
        );
        p
    }

    fn field(&self, name: &str) -> String {
        run_cmd(Command::new("dpkg-deb").arg("-f").arg(&self.deb).arg(name))
            .trim()
            .to_owned()
    }

    /// An absolute path of the installed system, inside the extracted root.
    fn path(&self, installed: &str) -> PathBuf {
        self.root.join(installed.trim_start_matches('/'))
    }
}

#[test]
fn package_installs_what_an_operator_needs() {
    let dir = TempDir::new("dist");
    let p = Package::build(dir.path());
    println!(
        "built {}:\n{}",
        p.deb.display(),
        run_cmd(Command::new("dpkg-deb").arg("-c").arg(&p.deb))
    );
    control(&p);
    binaries(&p);
    config(&p);
    unit(&p);
    man_pages(&p);
    completions(&p);
    shared_files(&p);
}

fn control(p: &Package) {
    assert_eq!(p.field("Package"), "lbd");
    assert_eq!(p.field("Version"), format!("{VERSION}-1"));
    let depends = p.field("Depends");
    for dep in ["libc6", "procps"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    assert_eq!(
        read(&p.control.join("conffiles")).trim(),
        "/etc/lbd/lbd.toml"
    );
    // The unit is installed but neither enabled nor started (the shipped config must be edited first); an upgrade
    // restarts lbd only if it runs, which is hitless.
    let postinst = read(&p.control.join("postinst"));
    assert!(postinst.contains("try-restart lbd.service"), "{postinst}");
    for never in ["deb-systemd-invoke start", "_dh_action"] {
        assert!(
            !postinst.contains(never),
            "postinst starts lbd:\n{postinst}"
        );
    }
    assert!(
        postinst.contains("was-enabled lbd.service"),
        "postinst enables lbd only if the admin had: {postinst}"
    );
}

fn binaries(p: &Package) {
    let version = run_cmd(Command::new(p.path("/usr/bin/lbd")).arg("--version"));
    assert_eq!(version.trim(), format!("lbd {VERSION}"));
    let help = run_cmd(Command::new(p.path("/usr/bin/lbctl")).arg("--help"));
    assert!(help.contains("Control the lbd XDP load balancer"), "{help}");
    for sub in lbctl::Cli::command().get_subcommands() {
        assert!(
            help.contains(sub.get_name()),
            "lbctl --help lacks {}:\n{help}",
            sub.get_name()
        );
    }
}

/// /etc/lbd/lbd.toml is the annotated example, and as shipped lbd refuses it (no interface), so installing and even
/// starting the package touches no interface.
fn config(p: &Package) {
    let installed = p.path("/etc/lbd/lbd.toml");
    assert_eq!(read(&installed), read(&workspace().join("config/lbd.toml")));
    let out = Command::new(p.path("/usr/bin/lbd"))
        .arg("--check")
        .arg("--config")
        .arg(&installed)
        .output()
        .expect("run the extracted lbd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("missing field `interface`"),
        "lbd --check accepted the shipped config ({}): {stderr}",
        out.status
    );
}

fn unit(p: &Package) {
    let unit = p.path("/usr/lib/systemd/system/lbd.service");
    let text = read(&unit);
    assert_eq!(text, read(&workspace().join("config/lbd.service")));
    // Every program the unit runs is in the package, or comes with a package it depends on (procps: /bin/kill).
    let mut borrowed = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("Exec")) {
        let program = line
            .split_once('=')
            .and_then(|(_, cmd)| cmd.split_whitespace().next())
            .unwrap_or_else(|| panic!("unit line {line:?}"));
        if p.path(program).is_file() {
            continue;
        }
        let owner = run_cmd(Command::new("dpkg").args(["-S", program]));
        let owner = owner.split(':').next().unwrap_or_default();
        assert!(
            p.field("Depends").contains(owner),
            "{line}: {program} is neither packaged nor from a dependency ({owner})"
        );
        borrowed.push(program.to_owned());
    }

    let Some(analyze) = which::which("systemd-analyze").ok() else {
        println!("SKIP systemd-analyze verify: systemd-analyze is not installed (apt: systemd)");
        return;
    };
    // Verify against the extracted root, with the dependencies' programs copied in from this host (a symlink would
    // resolve inside the root), and the man pages of Documentation= looked up in the package.
    for program in &borrowed {
        let inside = p.path(program);
        std::fs::create_dir_all(inside.parent().expect("a directory")).expect("mkdir in root");
        std::fs::copy(program, &inside).expect("copy a dependency's program into the root");
    }
    let out = Command::new(&analyze)
        .env("MANPATH", p.path("/usr/share/man"))
        .arg("verify")
        .arg("--recursive-errors=no")
        .arg(format!("--root={}", p.root.display()))
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify lbd.service ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sandbox(&analyze, &unit);
}

/// The unit's sandbox as `systemd-analyze security` scores it (0 = locked down, 10 = none): the score the README
/// quotes, so a setting dropped or loosened fails here. lbd runs as root with a host network and loads BPF, which
/// is most of what is left.
const MAX_EXPOSURE: f64 = 2.5;

fn sandbox(analyze: &Path, unit: &Path) {
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("systemd-analyze security lbd.service:\n{text}");
    if !out.status.success() && text.is_empty() {
        println!(
            "SKIP systemd-analyze security: this systemd cannot analyze offline: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for lbd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    assert!(
        level <= MAX_EXPOSURE,
        "lbd.service exposure {level} > {MAX_EXPOSURE}:\n{text}"
    );
    // Settings the score weighs little but lbd's safety depends on.
    for (setting, why) in [
        ("✓ CapabilityBoundingSet=~CAP_SYS_ADMIN", "no CAP_SYS_ADMIN"),
        // CAP_NET_RAW is granted: the running lbd keeps it to mark VIP-path probe sockets (privileges.rs).
        // Netlink stays allowed: lbd writes its announcement routes over it ([announce], README "Several balancers").
        ("✓ RestrictAddressFamilies=~AF_PACKET", "no packet sockets"),
        ("✓ NoNewPrivileges=", "no privileges regained"),
        ("✓ ProtectSystem=", "a read-only system"),
    ] {
        assert!(
            text.contains(setting),
            "lbd.service: {why} ({setting}):\n{text}"
        );
    }
    let body = read(unit);
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "LimitNOFILE=",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(line)),
            "lbd.service lacks {line}"
        );
    }
}

/// The display names of a command and all its visible subcommands: `lbctl`, `lbctl-vip`, `lbctl-vip-add`, ...
fn command_pages(mut cmd: clap::Command) -> Vec<String> {
    cmd.build();
    let mut names = Vec::new();
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        names.push(c.get_display_name().unwrap_or(c.get_name()).to_owned());
        stack.extend(
            c.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .cloned(),
        );
    }
    names
}

fn man_pages(p: &Package) {
    let man8 = p.path("/usr/share/man/man8");
    let mut pages = command_pages(lbd::Cli::command());
    pages.extend(command_pages(lbctl::Cli::command()));
    for page in &pages {
        let file = man8.join(format!("{page}.8.gz"));
        assert!(file.is_file(), "no man page {}", file.display());
    }
    let Some(man) = which::which("man").ok() else {
        println!("SKIP rendering the man pages: man is not installed (apt: man-db)");
        return;
    };
    for (page, expect) in [("lbd", "--config"), ("lbctl-vip-add", "--backend")] {
        let text = run_cmd(
            Command::new(&man)
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(man8.join(format!("{page}.8.gz"))),
        );
        assert!(
            text.contains("NAME") && text.contains(expect),
            "man -l {page}.8.gz:\n{text}"
        );
    }
}

fn completions(p: &Package) {
    for name in ["lbd", "lbctl"] {
        for file in [
            format!("/usr/share/bash-completion/completions/{name}"),
            format!("/usr/share/zsh/vendor-completions/_{name}"),
            format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
        ] {
            let text = read(&p.path(&file));
            assert!(text.contains(name), "{file} does not complete {name}");
        }
    }
    // bash-completion loads the file for `lbctl` and calls its function: `lbctl vip a<TAB>` must offer `add`.
    let script = format!(
        "source {}; COMP_WORDS=(lbctl vip a); COMP_CWORD=2; COMP_LINE='lbctl vip a'; COMP_POINT=11; \
         _lbctl lbctl a vip; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        p.path("/usr/share/bash-completion/completions/lbctl")
            .display()
    );
    let offered = run_cmd(Command::new("bash").arg("-c").arg(&script));
    assert_eq!(offered.trim(), "add", "bash completion of `lbctl vip a`");
    match which::which("fish") {
        Ok(fish) => {
            let script = format!(
                "source {}; complete -C 'lbctl vip a'",
                p.path("/usr/share/fish/vendor_completions.d/lbctl.fish")
                    .display()
            );
            let offered = run_cmd(Command::new(fish).args(["--no-config", "-c", &script]));
            assert!(
                offered.starts_with("add\t"),
                "fish completion of `lbctl vip a`: {offered}"
            );
        }
        Err(_) => println!("SKIP the fish completion check: fish is not installed (apt: fish)"),
    }
    match which::which("zsh") {
        Ok(zsh) => {
            // compinit finds the functions by their #compdef line in a directory of $fpath, as zsh does with
            // Debian's vendor-completions.
            let dir = p.path("/usr/share/zsh/vendor-completions");
            let script = format!(
                "fpath=({} $fpath); autoload -U compinit; compinit -u -D; print -r -- ${{_comps[lbd]}} ${{_comps[lbctl]}}",
                dir.display()
            );
            let registered = run_cmd(Command::new(&zsh).args(["-f", "-c", &script]));
            assert_eq!(registered.trim(), "_lbd _lbctl", "zsh compinit");
            run_cmd(Command::new(&zsh).arg("-n").arg(dir.join("_lbctl")));
        }
        Err(_) => println!("SKIP the zsh completion check: zsh is not installed (apt: zsh)"),
    }
}

fn shared_files(p: &Package) {
    for (installed, source) in [
        (
            "/usr/share/lbd/grafana-dashboard.json",
            "monitoring/grafana-dashboard.json",
        ),
        (
            "/usr/share/lbd/prometheus-alerts.yml",
            "monitoring/prometheus-alerts.yml",
        ),
        ("/usr/share/doc/lbd/README.md", "README.md"),
    ] {
        assert_eq!(
            read(&p.path(installed)),
            read(&workspace().join(source)),
            "{installed}"
        );
    }
}
