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
    /// Rebuild the projections in DATABASE_URL (an empty database, or one a rebuild
    /// left) from the log, then print their checksum. Reads the log through a consumer
    /// of its own: the running projector is not disturbed.
    Rebuild {
        /// The log position to stop at [default: the log's end when the rebuild starts].
        #[arg(long)]
        until: Option<u64>,
    },
    /// Print the checksum of the projections in DATABASE_URL (JSON). Equal checksums at
    /// equal positions mean equal projections.
    Checksum,
}

/// The allocator: jemalloc. Under load glibc's malloc spent as much CPU as our own
/// code; mimalloc cost the gateway 6–21% and the projector 22–42% more CPU per change
/// than jemalloc (README, "Speed").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    projector::telemetry::init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => projector::migrate(&cli.config.conn.database_url).await,
        Command::Rebuild { until } => {
            let sum = projector::replay::rebuild(cli.config, until).await?;
            println!("{}", serde_json::to_string_pretty(&sum)?);
            Ok(())
        }
        Command::Checksum => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&cli.config.conn.database_url)
                .await?;
            let sum = projector::replay::checksum(&pool, &cli.config.name).await?;
            println!("{}", serde_json::to_string_pretty(&sum)?);
            Ok(())
        }
        Command::Run => {
            let projector = Projector::build(cli.config).await?;
            projector
                .run_until_stopped(projector::shutdown_signal())
                .await
        }
    }
}
