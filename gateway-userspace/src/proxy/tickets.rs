//! TLS session tickets (TLS 1.3 and 1.2) sealed with keys that rotate on a schedule. The
//! previous key still opens tickets for one more rotation, so a ticket is accepted for one
//! to two rotations and no longer: an old key is erased, which keeps forward secrecy bounded.
//!
//! Alone, a ticketer rotates its own keys (checked when it seals or opens a ticket). In a
//! cluster the keys come from the cluster ([`Ticketer::adopt`]) so that any node resumes a
//! session another made; while the cluster cannot be reached it rotates on its own again.
//!
//! A ticket is `key id (8) | nonce (12) | AES-256-GCM(session state) | tag (16)`; the key id
//! is the additional data. Keys are never logged (their `Debug` is redacted).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;

use crate::api::tickets::{KeyBytes, TicketKeys};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::{SecureRandom, SystemRandom},
};

const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Fresh random key bytes; `None` only if the system's random source fails.
pub fn fresh_key() -> Option<KeyBytes> {
    let mut key = [0; 32];
    SystemRandom::new().fill(&mut key).ok()?;
    Some(key)
}

/// Now, as Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One AEAD key and the id that names it in tickets.
struct SealingKey {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

impl SealingKey {
    fn new(bytes: &KeyBytes) -> SealingKey {
        // The id is a digest of the key: the same on every node, and it reveals nothing.
        let digest = digest::digest(&digest::SHA256, bytes);
        let mut id = [0; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        SealingKey {
            id,
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// [`TicketKeys`] made ready to seal and open.
struct Keyring {
    keys: TicketKeys,
    current: SealingKey,
    previous: Option<SealingKey>,
}

impl Keyring {
    fn new(keys: TicketKeys) -> Keyring {
        Keyring {
            current: SealingKey::new(&keys.current),
            previous: keys.previous.as_ref().map(SealingKey::new),
            keys,
        }
    }
}

/// A listener's ticketer: kept across config reloads, so tickets stay valid through them.
pub struct Ticketer {
    keyring: ArcSwap<Keyring>,
    rotation_secs: AtomicU64,
    /// The keys come from the cluster: do not rotate them here.
    shared: AtomicBool,
    /// One rotation at a time.
    rotating: Mutex<()>,
    random: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("rotation", &self.rotation())
            .finish_non_exhaustive()
    }
}

impl Ticketer {
    /// A ticketer with a fresh key. `None` if the system's random source fails.
    pub fn new(rotation: Duration) -> Option<Ticketer> {
        let keys = TicketKeys {
            current: fresh_key()?,
            previous: None,
            rotated_at: unix_now(),
        };
        Some(Ticketer {
            keyring: ArcSwap::from_pointee(Keyring::new(keys)),
            rotation_secs: AtomicU64::new(rotation.as_secs().max(1)),
            shared: AtomicBool::new(false),
            rotating: Mutex::new(()),
            random: SystemRandom::new(),
        })
    }

    pub fn rotation(&self) -> Duration {
        Duration::from_secs(self.rotation_secs.load(Ordering::Relaxed))
    }

    /// A reload changed `rotate`: the keys in use stay.
    pub fn set_rotation(&self, rotation: Duration) {
        self.rotation_secs
            .store(rotation.as_secs().max(1), Ordering::Relaxed);
    }

    /// The keys in use.
    #[cfg(test)]
    pub fn keys(&self) -> TicketKeys {
        self.keyring.load().keys.clone()
    }

    /// Uses the cluster's keys from now on (and stops rotating here).
    pub fn adopt(&self, keys: TicketKeys) {
        self.shared.store(true, Ordering::Relaxed);
        if self.keyring.load().keys != keys {
            self.keyring.store(Arc::new(Keyring::new(keys)));
        }
    }

    /// The cluster cannot be reached: rotate here until it can.
    pub fn go_local(&self) {
        self.shared.store(false, Ordering::Relaxed);
    }

    /// Rotates if a rotation is due at `now` (Unix seconds): the current key becomes the
    /// previous one; after two missed rotations both keys are replaced.
    fn rotate_if_due(&self, now: u64) {
        let rotation = self.rotation_secs.load(Ordering::Relaxed);
        let due = |keys: &TicketKeys| now >= keys.rotated_at.saturating_add(rotation);
        if self.shared.load(Ordering::Relaxed) || !due(&self.keyring.load().keys) {
            return;
        }
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.keyring.load().keys.clone();
        if !due(&keys) {
            return;
        }
        let Some(fresh) = fresh_key() else {
            return;
        };
        let stale = now >= keys.rotated_at.saturating_add(rotation.saturating_mul(2));
        self.keyring.store(Arc::new(Keyring::new(TicketKeys {
            current: fresh,
            previous: (!stale).then_some(keys.current),
            rotated_at: now,
        })));
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keyring = self.keyring.load();
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&keyring.current.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = keyring
            .current
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&keyring.current.id),
                &mut ticket[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keyring = self.keyring.load();
        let key = [Some(&keyring.current), keyring.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|key| key.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.id), &mut buffer)
            .ok()?;
        let length = plain.len();
        buffer.truncate(length);
        Some(buffer)
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// The longest a ticket can be accepted: two rotations.
    fn lifetime(&self) -> u32 {
        let two = self.rotation_secs.load(Ordering::Relaxed).saturating_mul(2);
        u32::try_from(two).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due(unix_now());
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due(unix_now());
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer() -> Ticketer {
        Ticketer::new(Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn a_ticket_opens_until_two_rotations_have_passed() {
        let ticketer = ticketer();
        let start = ticketer.keys().rotated_at;
        let ticket = ticketer.seal(b"session state").unwrap();
        assert_eq!(ticketer.open(&ticket).unwrap(), b"session state");
        // Not due yet: nothing changes.
        ticketer.rotate_if_due(start + 59);
        assert_eq!(ticketer.keys().rotated_at, start);
        // One rotation: the previous key still opens it.
        ticketer.rotate_if_due(start + 60);
        assert_eq!(ticketer.open(&ticket).unwrap(), b"session state");
        let newer = ticketer.seal(b"newer").unwrap();
        // Two rotations: refused; the one sealed after the first still opens.
        ticketer.rotate_if_due(start + 120);
        assert_eq!(ticketer.open(&ticket), None);
        assert_eq!(ticketer.open(&newer).unwrap(), b"newer");
    }

    #[test]
    fn after_two_missed_rotations_both_keys_are_replaced() {
        let ticketer = ticketer();
        let start = ticketer.keys().rotated_at;
        let ticket = ticketer.seal(b"state").unwrap();
        ticketer.rotate_if_due(start + 120);
        assert_eq!(ticketer.keys().previous, None);
        assert_eq!(ticketer.open(&ticket), None);
    }

    #[test]
    fn shared_keys_are_not_rotated_here_and_open_anothers_tickets() {
        let one = ticketer();
        let other = ticketer();
        let ticket = one.seal(b"state").unwrap();
        assert_eq!(other.open(&ticket), None);
        other.adopt(one.keys());
        assert_eq!(other.open(&ticket).unwrap(), b"state");
        other.rotate_if_due(unix_now() + 3600);
        assert_eq!(other.keys(), one.keys(), "the cluster rotates shared keys");
        other.go_local();
        other.rotate_if_due(unix_now() + 3600);
        assert_ne!(other.keys().current, one.keys().current);
    }

    #[test]
    fn damaged_or_foreign_tickets_are_refused() {
        let ticketer = ticketer();
        let ticket = ticketer.seal(b"session state").unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; ID_LEN + NONCE_LEN + TAG_LEN - 1],
            vec![0; ID_LEN + NONCE_LEN + TAG_LEN],
            vec![0xff; 200],
            ticket[..ticket.len() - 1].to_vec(),
            ticket[..ID_LEN + NONCE_LEN + TAG_LEN - 1].to_vec(),
            [&ticket[..], b"x"].concat(),
            // Sealed by another ticketer.
            self::ticketer().seal(b"session state").unwrap(),
        ];
        // Every single bit flipped, in the id, nonce, ciphertext and tag.
        for at in 0..ticket.len() {
            for bit in 0..8 {
                let mut flipped = ticket.clone();
                flipped[at] ^= 1 << bit;
                cases.push(flipped);
            }
        }
        for case in &cases {
            assert_eq!(ticketer.open(case), None, "{case:?}");
        }
        assert_eq!(ticketer.open(&ticket).unwrap(), b"session state");
    }

    #[test]
    fn keys_are_not_in_debug_output() {
        let ticketer = ticketer();
        let keys = ticketer.keys();
        let printed = format!("{keys:?} {ticketer:?}");
        assert!(
            !printed.contains(&format!("{:?}", keys.current)),
            "{printed}"
        );
        assert!(!printed.contains("current"), "{printed}");
    }
}
