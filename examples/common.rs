//! Shared by the demos: use the broker at BROKER_URL, or start one in-process.

use broker::{Broker, Config};

/// The broker to talk to, and the in-process one (with its data dir) if we started it.
pub async fn broker() -> anyhow::Result<(String, Option<(Broker, tempfile::TempDir)>)> {
    if let Ok(url) = std::env::var("BROKER_URL") {
        return Ok((url, None));
    }
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    let broker = Broker::start(config).await?;
    println!(
        "(started an in-process broker at {}; set BROKER_URL to use yours)",
        broker.url()
    );
    Ok((broker.url(), Some((broker, dir))))
}
