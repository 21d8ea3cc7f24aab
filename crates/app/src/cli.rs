//! Command-line conventions both binaries share: exit codes, usage errors kept apart from
//! "inactive", the version line with the git revision, `check`'s report, and the shell
//! completions and man page generated from the clap definitions.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done; `status`: federation Active (edge) or every edge tunnel up (core) |
//! | 1 | an error: bad config, the daemon cannot be reached, a reload refused |
//! | 2 | `status`: the daemon runs but is Inactive or degraded (it says why) |
//! | 64 | a usage error: unknown command or option, missing argument (EX_USAGE) |

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::{CommandFactory, Parser};

/// Success.
pub const EXIT_OK: i32 = 0;
/// An error (see the table above).
pub const EXIT_ERROR: i32 = crate::admin::EXIT_UNREACHABLE;
/// `status`: running, not doing its job.
pub const EXIT_INACTIVE: i32 = crate::admin::EXIT_DEGRADED;
/// The command line itself is wrong (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// The version line: the package version and, when known at build, the git revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("CAUSEWAY_GIT_SUFFIX"));

/// Parse the process's arguments; help and `--version` exit 0, a usage error exits
/// [`EXIT_USAGE`] (clap's own 2 would read as "inactive" to a script).
pub fn parse<C: Parser>() -> C {
    match C::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let _ = std::io::stdout().flush();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK })
        }
    }
}

/// The shells completions are generated for.
pub type Shell = clap_complete::Shell;

/// Print the completion script of `C` (binary `name`) for `shell` on stdout.
pub fn print_completions<C: CommandFactory>(shell: Shell, name: &str) {
    let mut cmd = C::command();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// Write the man pages of `C` and its subcommands (section 1: `edge.1`, `edge-run.1`, ...)
/// into `dir`, which is created if missing.
pub fn write_man_pages<C: CommandFactory>(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(C::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

/// The exit status table, for `--help` and the man pages.
pub const EXIT_STATUS: &str = "Exit status: 0 done (status: Active); 1 an error (bad config, \
daemon unreachable, reload refused); 2 status: running but Inactive or degraded; 64 a usage error.";

/// Report `check` of `config`: the warnings and OK, or the error; as text or (`json`) one
/// JSON object (`{"config", "valid", "warnings", "error"}`). Returns the exit code.
pub fn check_report(config: &Path, outcome: anyhow::Result<Vec<String>>, json: bool) -> i32 {
    let (valid, warnings, error) = match outcome {
        Ok(w) => (true, w, None),
        Err(e) => (false, Vec::new(), Some(format!("{e:#}"))),
    };
    if json {
        let report = serde_json::json!({
            "config": config.display().to_string(),
            "valid": valid,
            "warnings": warnings,
            "error": error,
        });
        println!("{report}");
    } else {
        for w in &warnings {
            println!("warning: {w}");
        }
        match &error {
            None => println!("{}: OK", config.display()),
            Some(e) => eprintln!("{}: {e}", config.display()),
        }
    }
    if valid {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}
