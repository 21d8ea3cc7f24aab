//! `core`: see crates/core/src/lib.rs.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = causeway_core::cli::Cli::parse();
    if let Err(e) = causeway_core::cli::run(cli).await {
        eprintln!("core: {e:#}");
        std::process::exit(1);
    }
}
