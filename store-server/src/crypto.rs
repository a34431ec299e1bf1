//! The keys of crypto-shredding. The key file holds the master key, which never goes into
//! the database; it wraps each data subject's own key, and a subject's key seals the data
//! of that subject's events. Destroying a subject's wrapped key erases every event sealed
//! under it. AES-256-GCM from `ring`, with a fresh random nonce for every seal.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;

/// The first byte of everything sealed here: the format, so that a later one can be told apart.
const FORMAT: u8 = 1;

/// Why a key file was refused. Never holds the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the encryption key file {path}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold 64 hexadecimal digits.
    #[error(
        "the encryption key file {path} must hold one key of {KEY_BYTES} bytes as 64 hexadecimal \
         digits (`store-server key new` prints one)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// What sealed bytes failed to open as: damaged, moved from another event, or sealed under
/// another key. Says nothing of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed data does not open with this key here")]
pub struct Unopenable;

/// Names a master key without revealing it: the first 16 bytes of a SHA-256 of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// As stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// From a stored column; `None` when it is not 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// The key of the key file.
pub struct MasterKey {
    key: LessSafeKey,
    id: KeyId,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &hex::encode(self.id.0)).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Reads the key file at `path`: 64 hexadecimal digits, surrounding whitespace allowed.
    ///
    /// # Errors
    /// [`KeyFileError`] when it cannot be read or does not hold a key.
    pub fn read(path: &Path) -> Result<Self, KeyFileError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyFileError::Unreadable { path: path.to_owned(), source })?,
        );
        Self::from_hex(text.trim()).ok_or_else(|| KeyFileError::Malformed { path: path.to_owned() })
    }

    /// The key `text` spells in hexadecimal; `None` when it is not 32 bytes of it.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(text, bytes.as_mut_slice()).ok()?;
        Some(Self::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        let digest = Sha256::new_with_prefix(b"store-server master key id\0").chain_update(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.finalize()[..16]);
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key");
        Self { key: LessSafeKey::new(key), id: KeyId(id) }
    }

    /// A fresh random key, in hexadecimal: what a key file holds.
    pub fn generate_hex() -> String {
        let bytes = Zeroizing::new(random::<KEY_BYTES>());
        hex::encode(bytes.as_slice())
    }

    /// Its id, stored beside every key it wraps.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// A new key for `subject`, whose first event is at `since`, and that key wrapped by
    /// this one.
    pub fn new_subject_key(&self, subject: &str, since: u64) -> (SubjectKey, Vec<u8>) {
        let bytes = Zeroizing::new(random::<KEY_BYTES>());
        let wrapped = seal(&self.key, &wrap_aad(subject, since), bytes.as_slice());
        (SubjectKey::from_bytes(&bytes), wrapped)
    }

    /// Unwraps the key of `subject` since `since`.
    ///
    /// # Errors
    /// [`Unopenable`] when `wrapped` was not wrapped by this key for that subject and since.
    pub fn unwrap(
        &self,
        subject: &str,
        since: u64,
        wrapped: &[u8],
    ) -> Result<SubjectKey, Unopenable> {
        let bytes = Zeroizing::new(open(&self.key, &wrap_aad(subject, since), wrapped)?);
        let bytes: &[u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| Unopenable)?;
        Ok(SubjectKey::from_bytes(bytes))
    }

    /// `wrapped` (by this key) wrapped by `other` instead.
    ///
    /// # Errors
    /// [`Unopenable`] when `wrapped` was not wrapped by this key for that subject and since.
    pub fn rewrap(
        &self,
        other: &MasterKey,
        subject: &str,
        since: u64,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, Unopenable> {
        let aad = wrap_aad(subject, since);
        let bytes = Zeroizing::new(open(&self.key, &aad, wrapped)?);
        Ok(seal(&other.key, &aad, &bytes))
    }
}

/// A data subject's own key, unwrapped.
pub struct SubjectKey(LessSafeKey);

impl SubjectKey {
    fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        Self(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("an AES-256 key")))
    }

    /// Seals `data` of the event `id` at `position`: the ciphertext opens only as that event's.
    pub fn seal_event(&self, id: &uuid::Uuid, position: u64, data: &[u8]) -> Vec<u8> {
        seal(&self.0, &event_aad(id, position), data)
    }

    /// Opens the data of the event `id` at `position`.
    ///
    /// # Errors
    /// [`Unopenable`] when `sealed` is damaged, another event's, or under another key.
    pub fn open_event(
        &self,
        id: &uuid::Uuid,
        position: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, Unopenable> {
        open(&self.0, &event_aad(id, position), sealed)
    }
}

/// A wrapped key belongs to its subject and to the first position it seals.
fn wrap_aad(subject: &str, since: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(subject.len() + 16);
    aad.extend_from_slice(b"subject key\0");
    aad.extend_from_slice(&since.to_be_bytes());
    aad.extend_from_slice(subject.as_bytes());
    aad
}

/// Sealed data belongs to its event's id and position.
fn event_aad(id: &uuid::Uuid, position: u64) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(id.as_bytes());
    aad[16..].copy_from_slice(&position.to_be_bytes());
    aad
}

/// `FORMAT`, a random nonce, the ciphertext and its tag.
fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random::<NONCE_LEN>();
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
    sealed.push(FORMAT);
    sealed.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
        .expect("AES-GCM seals anything below 64 GiB");
    sealed.extend_from_slice(&body);
    sealed
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unopenable> {
    let (&format, rest) = sealed.split_first().ok_or(Unopenable)?;
    if format != FORMAT || rest.len() < NONCE_LEN {
        return Err(Unopenable);
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unopenable)?;
    let mut body = body.to_vec();
    let plaintext = key.open_in_place(nonce, Aad::from(aad), &mut body).map_err(|_| Unopenable)?;
    let length = plaintext.len();
    body.truncate(length);
    Ok(body)
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system's random source failing is not something to serve through.
    SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_hex(&MasterKey::generate_hex()).unwrap()
    }

    #[test]
    fn an_event_opens_with_its_subject_key_only_as_itself() {
        let master = key();
        let (subject_key, _) = master.new_subject_key("customer-1", 5);
        let id = uuid::Uuid::now_v7();
        let sealed = subject_key.seal_event(&id, 5, b"{\"name\":\"Ada\"}");
        assert_eq!(subject_key.open_event(&id, 5, &sealed).unwrap(), b"{\"name\":\"Ada\"}");
        assert_eq!(subject_key.open_event(&id, 6, &sealed), Err(Unopenable), "another position");
        let other_id = uuid::Uuid::now_v7();
        assert_eq!(subject_key.open_event(&other_id, 5, &sealed), Err(Unopenable), "another id");
        let (other_key, _) = master.new_subject_key("customer-2", 5);
        assert_eq!(other_key.open_event(&id, 5, &sealed), Err(Unopenable), "another subject");
    }

    #[test]
    fn the_same_data_seals_differently_every_time() {
        let (subject_key, _) = key().new_subject_key("s", 1);
        let id = uuid::Uuid::now_v7();
        assert_ne!(subject_key.seal_event(&id, 1, b"x"), subject_key.seal_event(&id, 1, b"x"));
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_master_key_for_its_subject() {
        let (master, other) = (key(), key());
        let (subject_key, wrapped) = master.new_subject_key("customer-1", 7);
        let id = uuid::Uuid::now_v7();
        let sealed = subject_key.seal_event(&id, 7, b"data");
        let unwrapped = master.unwrap("customer-1", 7, &wrapped).unwrap();
        assert_eq!(unwrapped.open_event(&id, 7, &sealed).unwrap(), b"data");
        assert!(other.unwrap("customer-1", 7, &wrapped).is_err(), "another master key");
        assert!(master.unwrap("customer-2", 7, &wrapped).is_err(), "another subject");
        assert!(master.unwrap("customer-1", 8, &wrapped).is_err(), "another generation");
        let rewrapped = master.rewrap(&other, "customer-1", 7, &wrapped).unwrap();
        assert!(master.unwrap("customer-1", 7, &rewrapped).is_err(), "the old key after rotation");
        let unwrapped = other.unwrap("customer-1", 7, &rewrapped).unwrap();
        assert_eq!(unwrapped.open_event(&id, 7, &sealed).unwrap(), b"data");
    }

    #[test]
    fn key_files_hold_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", MasterKey::generate_hex())).unwrap();
        assert!(MasterKey::read(&path).is_ok());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            std::fs::write(&path, bad).unwrap();
            let err = MasterKey::read(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Malformed { .. }), "{bad:?}");
            assert!(!err.to_string().contains(bad) || bad.is_empty());
        }
        assert!(matches!(
            MasterKey::read(&dir.path().join("missing")),
            Err(KeyFileError::Unreadable { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let text = MasterKey::generate_hex();
        let master = MasterKey::from_hex(&text).unwrap();
        assert!(!format!("{master:?}").contains(&text));
    }
}
