//! Session resumption on the https listeners: each listener's ticketer and TLS 1.2 session
//! cache live for the proxy's life, so a reload (which builds new rustls configs) keeps
//! every session resumable. With a shared key store (the cluster), a task per listener
//! keeps the ticketer on the cluster's keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    ServerConfig,
    server::{NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions},
};

use super::{
    handles::SharedTicketKeys,
    tickets::{Ticketer, fresh_key},
};
use crate::config::ListenerConfig;

/// How often, at most, a node asks the cluster for its ticket keys.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The resumption state of every https listener, by listener name.
pub struct Resumption {
    listeners: Mutex<HashMap<String, ListenerSessions>>,
    shared: Option<Arc<dyn SharedTicketKeys>>,
}

struct ListenerSessions {
    ticketer: Arc<Ticketer>,
    cache_size: usize,
    cache: Arc<dyn StoresServerSessions>,
    /// Keeps the ticketer on the cluster's keys.
    sync: Option<tokio::task::JoinHandle<()>>,
}

impl Resumption {
    pub fn new(shared: Option<Arc<dyn SharedTicketKeys>>) -> Resumption {
        Resumption {
            listeners: Mutex::new(HashMap::new()),
            shared,
        }
    }

    /// Puts `listener`'s ticketer and session cache into its new rustls config: the same
    /// ones as before a reload, with the reloaded rotation and cache size.
    pub fn apply(&self, listener: &ListenerConfig, config: &mut ServerConfig) {
        let Some(tls) = &listener.tls else { return };
        let settings = &tls.resumption;
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let rotation = settings
            .ticket_rotation
            .unwrap_or(crate::config::DEFAULT_TICKET_ROTATION);
        if !listeners.contains_key(&listener.name) {
            let Some(ticketer) = Ticketer::new(rotation) else {
                tracing::error!(
                    listener = listener.name,
                    "no random source for session ticket keys: no session resumption"
                );
                return;
            };
            let ticketer = Arc::new(ticketer);
            let sync = self.shared.clone().and_then(|shared| {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                Some(runtime.spawn(sync(shared, listener.name.clone(), ticketer.clone())))
            });
            listeners.insert(
                listener.name.clone(),
                ListenerSessions {
                    ticketer,
                    cache_size: settings.session_cache_size,
                    cache: session_cache(settings.session_cache_size),
                    sync,
                },
            );
        }
        let sessions = listeners.get_mut(&listener.name).expect("inserted above");
        if sessions.cache_size != settings.session_cache_size {
            sessions.cache_size = settings.session_cache_size;
            sessions.cache = session_cache(settings.session_cache_size);
        }
        sessions.ticketer.set_rotation(rotation);
        config.session_storage = sessions.cache.clone();
        if settings.ticket_rotation.is_some() {
            config.ticketer = sessions.ticketer.clone();
        }
    }
}

impl Drop for Resumption {
    fn drop(&mut self) {
        let listeners = self.listeners.get_mut().unwrap_or_else(|p| p.into_inner());
        for sessions in listeners.values() {
            if let Some(task) = &sessions.sync {
                task.abort();
            }
        }
    }
}

fn session_cache(size: usize) -> Arc<dyn StoresServerSessions> {
    match size {
        0 => Arc::new(NoServerSessionStorage {}),
        size => ServerSessionMemoryCache::new(size),
    }
}

/// Takes the cluster's keys for `listener` every [`SYNC_INTERVAL`] (sooner for short
/// rotations), offering a fresh key for when a rotation is due. While the cluster cannot
/// answer, the ticketer rotates on its own.
async fn sync(shared: Arc<dyn SharedTicketKeys>, listener: String, ticketer: Arc<Ticketer>) {
    let mut unreachable_logged = false;
    loop {
        let rotation = ticketer.rotation();
        let keys = match fresh_key() {
            Some(fresh) => shared.sync(&listener, rotation, fresh).await,
            None => None,
        };
        match keys {
            Some(keys) => {
                if unreachable_logged {
                    tracing::info!(listener, "session ticket keys are the cluster's again");
                    unreachable_logged = false;
                }
                ticketer.adopt(keys);
            }
            None => {
                if !unreachable_logged {
                    tracing::warn!(
                        listener,
                        "cannot share session ticket keys with the cluster; rotating them \
                         here until it answers (sessions resume on this node only)"
                    );
                    unreachable_logged = true;
                }
                ticketer.go_local();
            }
        }
        tokio::time::sleep(SYNC_INTERVAL.min(rotation / 4)).await;
    }
}
