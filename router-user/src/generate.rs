//! Shell completions and man pages, generated from the binaries' own clap definitions so
//! that they never drift from the arguments: `ROUTER_GENERATE=man routerctl` prints the man
//! page, `ROUTER_GENERATE=bash|zsh|fish routerd` a completion script (`cargo xtask package`
//! puts them in the .deb). An environment variable rather than a subcommand, so that the
//! command lines themselves show nothing of it.

use std::io::Write;

/// The variable that asks a binary to print a man page or a completion script and exit.
pub const ROUTER_GENERATE: &str = "ROUTER_GENERATE";

/// If `ROUTER_GENERATE` is set, writes what it names (`man`, `bash`, `zsh`, `fish`) for
/// `command` to stdout and exits the process; otherwise returns.
pub fn exit_if_asked(command: fn() -> clap::Command) {
    let Some(what) = std::env::var_os(ROUTER_GENERATE) else {
        return;
    };
    let code = match write(command(), &what.to_string_lossy(), &mut std::io::stdout()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{ROUTER_GENERATE}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Writes the man page (`man`) or the completion script of shell `what` for `command`.
pub fn write(mut command: clap::Command, what: &str, out: &mut dyn Write) -> std::io::Result<()> {
    use clap_complete::Shell;
    let shell = match what {
        "man" => return clap_mangen::Man::new(command).render(out),
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => {
            return Err(std::io::Error::other(format!(
                "{other:?}: expected man, bash, zsh or fish"
            )));
        }
    };
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    fn command() -> clap::Command {
        clap::Command::new("demo")
            .about("a demo")
            .arg(clap::Arg::new("config").long("config"))
    }

    #[test]
    fn writes_man_pages_and_completions() -> std::io::Result<()> {
        for (what, expected) in [
            ("man", ".TH demo"),
            ("bash", "_demo()"),
            ("zsh", "#compdef demo"),
            ("fish", "complete -c demo"),
        ] {
            let mut out = Vec::new();
            super::write(command(), what, &mut out)?;
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains(expected), "{what}: {text}");
            assert!(text.contains("config"), "{what}: {text}");
        }
        assert!(super::write(command(), "tcsh", &mut Vec::new()).is_err());
        Ok(())
    }
}
