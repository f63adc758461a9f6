//! The command lines of `lbd` and `lbctl` as clap definitions, without behaviour: the binaries parse them, and
//! `lb-dist` renders the package's man pages and shell completions from the same types, so those cannot drift.

pub mod lbctl;
pub mod lbd;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        super::lbd::Cli::command().debug_assert();
        super::lbctl::Cli::command().debug_assert();
    }
}
