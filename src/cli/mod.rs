//! Command line: parse (`args`), set up logging, dispatch to a command (`commands`), and map outcomes
//! to exit codes.

pub mod args;
mod commands;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use args::Command;

#[derive(Parser, Debug)]
#[command(
    name = "cdrguard",
    version,
    about = "Real-time telecom fraud and arrears detection over CDR streams"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `cdrguard=debug`. Env: CDRGUARD_LOG.
    #[arg(long, global = true, env = "CDRGUARD_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event (colours on a terminal).
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// The build: version, git commit, and the linked librdkafka with its features.
pub fn version() -> String {
    let (rdkafka, features) = crate::client::build_info();
    format!(
        "{} (commit {})\nlibrdkafka {rdkafka} (features: {features})",
        env!("CARGO_PKG_VERSION"),
        env!("CDRGUARD_GIT_COMMIT"),
    )
}

impl Cli {
    /// Parses the command line; `--version` shows `version()` (known only at run time: the
    /// librdkafka features come from the linked library).
    pub fn from_command_line() -> Cli {
        let v: &'static str = Box::leak(version().into_boxed_str());
        let matches = Cli::command().version(v).long_version(v).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

pub fn init_tracing(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .with_context(|| format!("--log {:?}", cli.log))?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
    Ok(())
}

/// Runs a command; the result is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Replay(a) => commands::replay_cmd(a),
        Command::Diff(a) => commands::diff_cmd(a),
        Command::Inspect(a) => commands::inspect_cmd(a),
        Command::Gen(a) => commands::gen_cmd(a),
        Command::Check(a) => commands::check_cmd(a),
        Command::Test(a) => commands::test_cmd(a),
        Command::Run(a) => commands::run_cmd(a, cli.log_format == LogFormat::Json),
        Command::State(a) => commands::state_cmd(a),
    }
}
