//! The projector binary: `projector [run]` projects the log; `projector migrate` applies
//! the SQL migrations and exits.

use clap::{Parser, Subcommand};
use projector::{Config, Projector};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then project the log until stopped (the default).
    Run,
    /// Apply migrations and exit.
    Migrate,
}

/// The allocator: glibc's malloc spent as much CPU as our own code under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    projector::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => projector::migrate(&cli.config.conn.database_url).await,
        Command::Run => {
            let projector = Projector::build(cli.config).await?;
            projector
                .run_until_stopped(projector::shutdown_signal())
                .await
        }
    }
}
