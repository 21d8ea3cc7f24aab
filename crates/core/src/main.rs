//! `core`: see crates/core/src/lib.rs.

#[tokio::main]
async fn main() {
    let cli = causeway_core::cli::parse();
    if let Err(e) = causeway_core::cli::run(cli).await {
        eprintln!("core: {e:#}");
        std::process::exit(1);
    }
}
