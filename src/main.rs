//! The `trackproxy` binary: parse the command line, load the configuration, set up logging and
//! the runtime, run. Exit codes: 0 success, 64 configuration error, 1 start-up failure.

use std::process::ExitCode;

use clap::Parser;
use trackproxy::cli::{self, Cli, Command, ConfigArg, DoctorArgs, EXIT_CONFIG, ProbeArgs};
use trackproxy::config::{self, Config};
use trackproxy::server::Listeners;
use trackproxy::{App, doctor, shutdown, telemetry};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Probe(args) => probe(&args),
        Command::Doctor(args) => run_doctor(&args),
        Command::Certs(args) => {
            telemetry::init_cli();
            load(&args).map_or_else(
                |code| code,
                |cfg| {
                    print!("{}", cli::certs_table(&cfg));
                    ExitCode::SUCCESS
                },
            )
        }
    }
}

fn probe(args: &ProbeArgs) -> ExitCode {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli::probe(cfg.admin.listen, &args.path, args.timeout) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!(
                "trackproxy: {}{} answered {status}",
                cfg.admin.listen, args.path
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("trackproxy: {}{}: {e}", cfg.admin.listen, args.path);
            ExitCode::FAILURE
        }
    }
}

fn run_doctor(args: &DoctorArgs) -> ExitCode {
    telemetry::init_cli();
    match load(&args.config) {
        Ok(cfg) => ExitCode::from(doctor::run(args, &cfg)),
        Err(code) => code,
    }
}

fn load(args: &ConfigArg) -> Result<Config, ExitCode> {
    config::load(&args.source()).map_err(|e| {
        eprintln!("trackproxy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(args: &ConfigArg) -> ExitCode {
    telemetry::init_cli();
    let cfg = match load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match App::build(&cfg) {
        Ok(app) => {
            print!("{}", trackproxy::cli::check_report(&app));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trackproxy: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(args: &ConfigArg) -> ExitCode {
    let cfg = match load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log = telemetry::init(&cfg.log);
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
        let reloads = shutdown::reload_on_sighup(args.source(), app.reloader());
        tokio::select! {
            r = trackproxy::serve(app, listeners, shutdown::signal()) => r?,
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
