//! The `trackproxy` binary: parse the command line, load the configuration, set up logging and
//! the runtime, run. Exit codes: 0 success, 64 configuration error, 1 start-up failure.

use std::process::ExitCode;

use clap::Parser;
use trackproxy::Listeners;
use trackproxy::cli::{self, Cli, Command, ConfigArg, EXIT_CONFIG};
use trackproxy::{App, logging, signals};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        other => cli::run(other),
    }
}

fn serve(args: &ConfigArg) -> ExitCode {
    let cfg = match cli::load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log = logging::init(&cfg.log);
    let app = match App::build(&cfg) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("trackproxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackproxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listeners = Listeners::bind(&cfg).await?;
        let reloads = signals::reload_on_sighup(args.source(), app.reloader());
        tokio::select! {
            r = trackproxy::serve(app, listeners, signals::signal()) => r?,
            () = reloads => {}
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
