//! `cdrguard`: parse the command line, set up logging, run, map the outcome to an exit code.

fn main() {
    let cli = cdrguard::cli::Cli::from_command_line();
    if let Err(e) = cdrguard::cli::init_tracing(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    match cdrguard::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
