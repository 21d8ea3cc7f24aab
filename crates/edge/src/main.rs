//! `edge`: see crates/edge/src/lib.rs.

#[tokio::main]
async fn main() {
    let cli = causeway_edge::cli::parse();
    if let Err(e) = causeway_edge::cli::run(cli).await {
        eprintln!("edge: {e:#}");
        std::process::exit(1);
    }
}
