//! `ec-console`: parse flags, load the shared configuration, open the log file if asked,
//! and run the console on this terminal until the operator quits. Everything else lives in
//! the `ec_console` library.

use std::sync::Arc;

use clap::Parser;
use color_eyre::eyre::{Result, WrapErr};

use ec_console::{ConsoleArgs, SystemClock};

fn main() -> Result<()> {
    ec_cli::install_error_reporting()?;
    ec_cli::user_error(run())
}

fn run() -> Result<()> {
    let args = ConsoleArgs::parse();
    let settings = args.settings().wrap_err("cannot load the settings")?;
    if let Some(path) = &settings.log_file {
        ec_console::log_to_file(path)?;
    }
    tokio::runtime::Runtime::new()
        .wrap_err("cannot start the async runtime")?
        .block_on(ec_console::runner::run(settings, Arc::new(SystemClock)))
        .wrap_err("the console stopped with an error")
}
