//! Live reconfiguration of core: read the config file again and apply what changed.

use crate::Core;

impl Core {
    /// Re-read the config file and apply it. A bad config is refused and the running one kept.
    pub async fn reload(&self) -> anyhow::Result<String> {
        let next = crate::config::load(&self.config_path)?;
        drop(next);
        anyhow::bail!("live reload is not implemented yet; restart to apply changes")
    }
}
