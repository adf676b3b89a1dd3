//! The projector as its own process, for tests that kill it with SIGKILL.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: projector::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    projector::telemetry::init();
    let cli = Cli::parse();
    projector::Projector::build(cli.config)
        .await?
        .run_until_stopped(projector::shutdown_signal())
        .await
}
