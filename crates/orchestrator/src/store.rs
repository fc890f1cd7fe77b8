//! The registry as the async code uses it: one handle per process on
//! whatever [`Store`] holds the records, every call on the blocking pool so
//! a database never stalls a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orch_registry::{Registry, Store};

use crate::Error;

/// A handle on this process's registry; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    store: Arc<dyn Store>,
    path: PathBuf,
}

impl Records {
    /// Opens (creating if needed) the SQLite registry at `path`, on the
    /// blocking pool.
    pub(crate) async fn open(path: &Path) -> Result<Records, Error> {
        let owned = path.to_path_buf();
        let registry = tokio::task::spawn_blocking(move || Registry::open(&owned))
            .await
            .map_err(|e| Error::io("open", path, std::io::Error::other(e)))??;
        Ok(Records::over(Arc::new(registry), path))
    }

    /// Records held by `store` (`place`: where it is, for messages).
    pub(crate) fn over(store: Arc<dyn Store>, place: &Path) -> Records {
        Records {
            store,
            path: place.to_path_buf(),
        }
    }

    /// Runs `work` against the store on the blocking pool.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, orch_registry::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(&*store))
            .await
            .map_err(|e| Error::io("use", &self.path, std::io::Error::other(e)))?
            .map_err(Error::from)
    }
}
