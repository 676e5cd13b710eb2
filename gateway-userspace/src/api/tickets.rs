//! What crosses `proxy::SharedTicketKeys`: a listener's session ticket keys, as the proxy
//! seals tickets with them and the cluster shares them.

/// A ticket key's secret bytes.
pub type KeyBytes = [u8; 32];
/// The keys in use: shared with the cluster as they are.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKeys {
    pub current: KeyBytes,
    pub previous: Option<KeyBytes>,
    /// When `current` became current (Unix seconds).
    pub rotated_at: u64,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("rotated_at", &self.rotated_at)
            .finish_non_exhaustive()
    }
}
