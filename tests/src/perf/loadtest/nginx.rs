//! The wrk phase's backends: nginx, one single-process server per backend on the VIPs' HTTP port, so that what
//! limits the balancers being compared is not the backends (the lab's own server, a 4-thread tiny_http, answered
//! far fewer requests per CPU second). The lab's server moves to another HTTP port meanwhile and keeps answering the
//! UDP and HTTPS checks; nginx answers the TCP and HTTP ones. Each nginx's CPU time is read around every run
//! ([`Nginx::pids`]), so the report shows whether a backend was saturated.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::harness::guards::ChildGuard;
use crate::harness::wait;
use crate::lab::{HTTP_PORT, Lab};

/// Where the lab's own HTTP server listens while nginx has the VIPs' port.
const LAB_SERVER_PORT: u16 = 8080;

pub struct Nginx {
    servers: Vec<ChildGuard>,
}

impl Nginx {
    /// Moves every backend's lab server off the VIPs' HTTP port and starts nginx on it, answering every request
    /// with the backend's name as the lab's server does.
    pub fn start(lab: &mut Lab) -> Result<Nginx> {
        let mut servers = Vec::new();
        for i in 0..lab.backends.len() {
            lab.stop_server(i);
            lab.start_server_on(i, LAB_SERVER_PORT);
            let b = &lab.backends[i];
            let dir = lab.dir.path().join(format!("nginx-{}", b.name));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(&dir.to_string_lossy(), &b.name))
                .with_context(|| format!("writing {}", conf.display()))?;
            let (conf, prefix, errors) = (
                conf.to_string_lossy().into_owned(),
                format!("{}/", dir.display()),
                dir.join("error.log").to_string_lossy().into_owned(),
            );
            let mut cmd = b
                .host
                .ns
                .command(&["nginx", "-c", &conf, "-p", &prefix, "-e", &errors]);
            cmd.stdin(Stdio::null());
            servers.push(ChildGuard::spawn(cmd, &format!("nginx of {}", b.name)));
            let addr = SocketAddr::new(IpAddr::V4(b.host.v4), HTTP_PORT);
            b.host.ns.run(|| {
                wait::until_true(
                    &format!("nginx on {addr} to accept"),
                    Duration::from_secs(10),
                    Duration::from_millis(50),
                    || {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                            .is_ok()
                    },
                    || std::fs::read_to_string(&errors).unwrap_or_default(),
                )
            });
        }
        Ok(Nginx { servers })
    }

    /// The nginx processes (one per backend, each serving on one thread).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(ChildGuard::id).collect()
    }

    /// Stops nginx and gives the VIPs' HTTP port back to the lab's servers.
    pub fn stop(self, lab: &mut Lab) {
        drop(self.servers);
        for i in 0..lab.backends.len() {
            lab.stop_server(i);
            lab.start_server(i);
        }
    }
}

/// One process (`master_process off`: nothing to reap when it is killed), no access log, every temp path inside
/// `dir`, keep-alive connections that last the whole run.
fn config(dir: &str, name: &str) -> String {
    format!(
        "daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type text/plain;
    server {{
        listen {HTTP_PORT} default_server;
        listen [::]:{HTTP_PORT} default_server;
        location / {{ return 200 \"{name}\\n\"; }}
    }}
}}
"
    )
}
