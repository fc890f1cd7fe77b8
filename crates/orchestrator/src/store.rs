//! The registry as the async code uses it: one connection per process,
//! every call on the blocking pool so SQLite never stalls a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use orch_registry::Registry;

use crate::Error;

/// A handle on this process's registry connection; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    registry: Arc<Mutex<Registry>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the registry at `path`, on the blocking
    /// pool.
    pub(crate) async fn open(path: &Path) -> Result<Store, Error> {
        let owned = path.to_path_buf();
        let registry = tokio::task::spawn_blocking(move || Registry::open(&owned))
            .await
            .map_err(|e| Error::io("open", path, std::io::Error::other(e)))??;
        Ok(Store {
            registry: Arc::new(Mutex::new(registry)),
            path: path.to_path_buf(),
        })
    }

    /// Runs `work` against the registry on the blocking pool.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Registry) -> Result<T, orch_registry::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || {
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            work(&registry)
        })
        .await
        .map_err(|e| Error::io("use", &self.path, std::io::Error::other(e)))?
        .map_err(Error::from)
    }
}
