//! AES-256-GCM (aws-lc-rs) for the secrets kept in the store: `1 ‖ nonce (12) ‖ ciphertext ‖
//! tag`, a random nonce per seal, and the row it belongs to (directory, host, kind) as
//! associated data, so a sealed key copied into another row does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;

/// The store key, ready to seal and open.
pub(crate) struct Seal(LessSafeKey);

impl Seal {
    /// `None` unless `key` is 32 bytes.
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        UnboundKey::new(&AES_256_GCM, key)
            .ok()
            .map(|k| Seal(LessSafeKey::new(k)))
    }

    pub(crate) fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no random nonce".to_owned())?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(context)),
                &mut buf,
            )
            .map_err(|_| "encryption failed".to_owned())?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// `None` when `sealed` was not sealed with this key for `context`.
    pub(crate) fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(aad(context)), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn aad(context: &str) -> Vec<u8> {
    [b"trackproxy-acme-v1\0".as_slice(), context.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_key_and_context_it_was_sealed_with() {
        let a = Seal::new(&[7; 32]).unwrap();
        let b = Seal::new(&[8; 32]).unwrap();
        let sealed = a.seal("cert\0dir\0host", b"secret key").unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"secret key"));
        assert_eq!(a.open("cert\0dir\0host", &sealed).unwrap(), b"secret key");
        assert!(b.open("cert\0dir\0host", &sealed).is_none());
        assert!(a.open("cert\0dir\0other", &sealed).is_none());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(a.open("cert\0dir\0host", &flipped).is_none());
        assert!(a.open("x", &[]).is_none());
        assert!(Seal::new(&[0; 16]).is_none());
    }
}
