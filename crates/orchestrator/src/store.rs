//! The registry as the async code uses it: one handle per process on
//! whatever [`Store`] holds the records, every call on the blocking pool so
//! a database never stalls a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orch_registry::{Postgres, Registry, Store};

use crate::config::GlobalConfig;
use crate::{Error, Home};

/// A handle on this process's registry; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    store: Arc<dyn Store>,
    path: PathBuf,
}

impl Records {
    /// Opens the registry `home` uses: the cluster's database if one is set
    /// (`ORCH_REGISTRY`, `[registry] url`), else the home's own SQLite
    /// registry, created if needed. On the blocking pool.
    pub(crate) async fn of_home(home: &Home) -> Result<Records, Error> {
        let config = GlobalConfig::load(GlobalConfig::default_path().as_deref())?;
        match crate::cluster::registry_url(&config)? {
            Some(url) => {
                let pg = tokio::task::spawn_blocking(move || Postgres::open(&url))
                    .await
                    .map_err(|e| {
                        Error::io("open", Path::new("the registry"), std::io::Error::other(e))
                    })??;
                let place = PathBuf::from(pg.place());
                Ok(Records::over(Arc::new(pg), &place))
            }
            None => Records::open(&home.registry_path()).await,
        }
    }

    /// Whether several hosts share these records.
    pub(crate) fn shared(&self) -> bool {
        self.store.shared()
    }

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
