//! `edge`: see crates/edge/src/lib.rs.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = causeway_edge::cli::Cli::parse();
    if let Err(e) = causeway_edge::cli::run(cli).await {
        eprintln!("edge: {e:#}");
        std::process::exit(1);
    }
}
