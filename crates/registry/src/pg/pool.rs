//! A small pool of connections to one PostgreSQL database, and the one way
//! every call goes through it: a connection that breaks (the server
//! restarted, the network dropped it) is dropped and the call tried again
//! on a new one, with backoff, for a bounded time. Each connection keeps
//! the statements it prepared, so that a hot call is one round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use orch_retry::Backoff;
use postgres::{Client, NoTls, Statement};

use crate::Error;

/// Connections a node holds at most for its calls (one more listens for
/// wake-ups).
pub const POOL_SIZE: usize = 3;

/// How long a call keeps trying while the database cannot be reached: a
/// server restart is ridden out; a longer outage is the caller's to handle
/// (a lease loop self-fences, a run keeps what it could not record).
const RIDE_OUT: Duration = Duration::from_secs(20);

/// How long connecting may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to one database, at most [`POOL_SIZE`] at once.
pub(super) struct Pool {
    config: postgres::Config,
    place: String,
    state: Mutex<State>,
}

struct State {
    idle: Vec<Conn>,
    open: usize,
    /// Callers waiting for a connection, the longest first.
    waiting: VecDeque<Arc<Turn>>,
}

/// A waiting caller's place: what it is handed, and its wake-up.
#[derive(Default)]
struct Turn {
    handed: Mutex<Option<Handoff>>,
    ready: Condvar,
}

/// What a waiting caller is handed: a connection, or a place to open one in.
enum Handoff {
    Conn(Box<Conn>),
    Open,
}

/// A pooled connection and the statements prepared on it.
pub(super) struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            prepared: HashMap::new(),
        }
    }

    /// `sql` prepared on this connection, once: later calls reuse it (no
    /// parse, no plan, no round trip of its own).
    pub(super) fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("place", &self.place).finish()
    }
}

impl Pool {
    pub(super) fn new(config: postgres::Config, place: String) -> Pool {
        Pool {
            config,
            place,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                waiting: VecDeque::new(),
            }),
        }
    }

    pub(super) fn place(&self) -> &str {
        &self.place
    }

    pub(super) fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// A new connection, outside the pool (the listener's).
    pub(super) fn connect(&self) -> Result<Client, postgres::Error> {
        self.config.connect(NoTls)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an idle connection, opens one if fewer than the pool's size
    /// are open, else waits its turn: callers are served in the order they
    /// came, each freed connection handed to the one that waited longest
    /// (a burst of calls never leaves one of them waiting behind later
    /// ones).
    fn take(&self) -> Result<Conn, postgres::Error> {
        let mut state = self.state();
        if state.waiting.is_empty() {
            while let Some(conn) = state.idle.pop() {
                if !conn.is_closed() {
                    return Ok(conn);
                }
                state.open -= 1;
            }
            if state.open < POOL_SIZE {
                state.open += 1;
                drop(state);
                return self.open();
            }
        }
        let turn = Arc::new(Turn::default());
        state.waiting.push_back(turn.clone());
        drop(state);
        let mut handed = turn.handed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match handed.take() {
                Some(Handoff::Conn(conn)) if !conn.is_closed() => return Ok(*conn),
                // Its place in the pool, to open a connection in.
                Some(Handoff::Conn(_) | Handoff::Open) => {
                    drop(handed);
                    return self.open();
                }
                None => handed = turn.ready.wait(handed).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Opens a connection in a place already counted as open; a failure
    /// gives the place back.
    fn open(&self) -> Result<Conn, postgres::Error> {
        self.config
            .connect(NoTls)
            .map(Conn::new)
            .inspect_err(|_| self.give(None))
    }

    /// Gives a connection back, or forgets a broken one: to the caller that
    /// waited longest, if one waits.
    fn give(&self, conn: Option<Conn>) {
        let mut state = self.state();
        let conn = conn.filter(|c| !c.is_closed());
        let Some(next) = state.waiting.pop_front() else {
            match conn {
                Some(conn) => state.idle.push(conn),
                None => state.open -= 1,
            }
            return;
        };
        drop(state);
        let handoff = conn.map_or(Handoff::Open, |c| Handoff::Conn(Box::new(c)));
        *next.handed.lock().unwrap_or_else(|p| p.into_inner()) = Some(handoff);
        next.ready.notify_one();
    }

    /// Runs `work` on a pooled connection. A call that fails because the
    /// connection broke or the server is going away is tried again on a
    /// new connection, for [`RIDE_OUT`] at most; any other error is the
    /// call's.
    pub(super) fn with<T>(
        &self,
        action: &'static str,
        mut work: impl FnMut(&mut Conn) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        // Tries stay close together: a lease renewal must land soon after
        // the server is back (a restart takes about a second).
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500))
            .within(RIDE_OUT)
            .jittered();
        loop {
            let outcome = match self.take() {
                Ok(mut conn) => {
                    let outcome = work(&mut conn);
                    let broken = matches!(&outcome, Err(Failure::Db(e)) if transient(e));
                    self.give((!broken).then_some(conn));
                    outcome
                }
                Err(e) => Err(Failure::Db(e)),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(Failure::Orch(e)) => return Err(e),
                Err(Failure::Db(e)) if transient(&e) && backoff.sleep() => {
                    tracing::debug!(registry = %self.place, error = %e, "the registry is out of reach; trying again");
                }
                Err(Failure::Db(source)) => {
                    return Err(Error::Postgres {
                        action,
                        place: self.place.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl Drop for Pool {
    /// Each connection runs a small runtime of its own, which must not be
    /// dropped on an async runtime's thread: they are dropped on a thread
    /// of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.state().idle);
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("orch-pool-close".into())
                .spawn(move || drop(idle));
        }
    }
}

/// Why a call failed: the database, or orch's own rule (a fenced write, an
/// illegal transition).
pub(super) enum Failure {
    Db(postgres::Error),
    Orch(Error),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Orch(e)
    }
}

/// True for an error that a new connection may not have: the connection
/// closed or broke, the server shuts down or restarts, or cannot take
/// connections yet; a prepared statement the server no longer has or whose
/// plan a migration changed (a new connection prepares it afresh); and a
/// serialization failure or deadlock, which the same transaction run again
/// resolves.
pub(super) fn transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "26000"
                || code == "0A000"
                || code == "40001"
                || code == "40P01"
        }
        // No SQLSTATE: an I/O error on the connection, or a refused one
        // (a wrong password has one).
        None => true,
    }
}
