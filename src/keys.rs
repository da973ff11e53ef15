//! Key material from PEM files, checked the way it will be used, so a bad file is a config error with
//! its line instead of a panic at start or a refusal of every request: the JWT verification key
//! (`[auth] jwt_public_key`) and the TLS certificate and key (`[server.tls]`).

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{alg_id, CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The RSA modulus sizes jsonwebtoken's RS256 verifier (ring's `RSA_PKCS1_2048_8192_SHA256`)
/// accepts; a key outside them would refuse every token.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// The key that verifies tokens: an RSA (RS256) or EC P-256 (ES256) public key, as a `PUBLIC KEY`
/// (SubjectPublicKeyInfo), an `RSA PUBLIC KEY` (PKCS#1) or the `CERTIFICATE` holding it.
pub fn jwt_public_key(text: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    // rustls' PEM reader skips labels it does not know, PKCS#1's among them.
    if let Some(pkcs1) = pem_section(text, "RSA PUBLIC KEY") {
        return rsa_public_key(&pkcs1);
    }
    match <(SectionKind, Vec<u8>)>::pem_slice_iter(text).next() {
        Some(Ok((SectionKind::PublicKey, der))) => spki_key(&der),
        Some(Ok((SectionKind::Certificate, der))) => {
            let spki = certificate_spki(&der).ok_or("the certificate cannot be parsed")?;
            spki_key(spki)
        }
        Some(Ok((
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
            _,
        ))) => {
            Err("this is a private key: give its public key (openssl pkey -in KEY -pubout)".into())
        }
        Some(Ok((kind, _))) => Err(format!(
            "a PEM {kind:?} section: expected a PUBLIC KEY, an RSA PUBLIC KEY or a CERTIFICATE"
        )),
        Some(Err(e)) => Err(format!("not valid PEM: {e}")),
        None => Err("no PEM public key (-----BEGIN PUBLIC KEY-----) in the file".into()),
    }
}

/// A key from a SubjectPublicKeyInfo: RSA of 2048 to 8192 bits, or EC on P-256.
fn spki_key(spki: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let malformed = || "the public key cannot be parsed".to_owned();
    let Some((0x30, body, _)) = der(spki) else {
        return Err(malformed());
    };
    let Some(((0x30, algorithm), (0x03, bits))) = first_two(body) else {
        return Err(malformed());
    };
    // A BIT STRING starts with its count of unused bits: a key has none.
    let key = bits.strip_prefix(&[0]).ok_or_else(malformed)?;
    if algorithm == alg_id::RSA_ENCRYPTION.as_ref() {
        rsa_public_key(key)
    } else if algorithm == alg_id::ECDSA_P256.as_ref() {
        // ring takes an uncompressed point: 0x04, then X and Y of 32 bytes each.
        if key.len() != 65 || key[0] != 4 {
            return Err("the EC P-256 public key is not an uncompressed point".into());
        }
        Ok((Algorithm::ES256, DecodingKey::from_ec_der(key)))
    } else if algorithm == alg_id::ECDSA_P384.as_ref() || algorithm == alg_id::ECDSA_P521.as_ref() {
        Err("an EC key on P-384 or P-521: ES256 tokens need a P-256 key".into())
    } else if algorithm == alg_id::ED25519.as_ref() {
        Err("an Ed25519 key: sluice verifies RS256 and ES256 tokens".into())
    } else {
        Err("not an RSA or EC P-256 public key".into())
    }
}

/// An RS256 key from a PKCS#1 `RSAPublicKey`, if its modulus has a size RS256 verifies with.
fn rsa_public_key(pkcs1: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let Some((0x30, body, _)) = der(pkcs1) else {
        return Err("the RSA public key cannot be parsed".into());
    };
    let Some(((0x02, modulus), (0x02, _exponent))) = first_two(body) else {
        return Err("the RSA public key cannot be parsed".into());
    };
    // An INTEGER has a leading zero byte when its top bit is set; it is no part of the size.
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    let modulus = &modulus[start..];
    let bits = modulus
        .first()
        .map_or(0, |top| modulus.len() * 8 - top.leading_zeros() as usize);
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "a {bits}-bit RSA key: RS256 needs {} to {} bits",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    Ok((Algorithm::RS256, DecodingKey::from_rsa_der(pkcs1)))
}

/// The SubjectPublicKeyInfo (with its header) inside an X.509 certificate.
fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    // An explicit version ([0]) may come first; then serial, signature, issuer, validity, subject.
    if rest.first() == Some(&0xa0) {
        rest = der(rest)?.2;
    }
    for _ in 0..5 {
        rest = der(rest)?.2;
    }
    let (0x30, _, after) = der(rest)? else {
        return None;
    };
    Some(&rest[..rest.len() - after.len()])
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A DER element's tag and contents.
type Element<'a> = (u8, &'a [u8]);

/// The first two DER elements in `body`.
fn first_two(body: &[u8]) -> Option<(Element<'_>, Element<'_>)> {
    let (tag, contents, rest) = der(body)?;
    let (second_tag, second, _) = der(rest)?;
    Some(((tag, contents), (second_tag, second)))
}

/// The decoded body of the first PEM section labelled `label`, if there is one.
fn pem_section(text: &[u8], label: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = &text[text.find(&begin)? + begin.len()..];
    let body: String = body[..body.find(&end)?]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Which file of a TLS pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

/// The certificate chain and private key of the TLS listeners, loaded and matched as rustls will use
/// them: every `CERTIFICATE` in `cert` (the server's first), the first private key in `key`.
pub fn tls_certified_key(cert: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, (TlsFile, String)> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (TlsFile::Cert, format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err((
            TlsFile::Cert,
            "no certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        (
            TlsFile::Key,
            match e {
                pem::Error::NoItemsFound => {
                    "no private key (-----BEGIN PRIVATE KEY-----) in the file".into()
                }
                e => format!("not valid PEM: {e}"),
            },
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| (TlsFile::Key, format!("the private key cannot be used: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // rustls itself accepts a key whose public half it cannot tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err((
            TlsFile::Key,
            "the private key does not match the certificate".into(),
        )),
        Err(e) => Err((
            TlsFile::Cert,
            format!("the certificate cannot be used: {e}"),
        )),
    }
}

/// Serves the configured certificate to every client (what rustls' `with_single_cert` does), so
/// pingora never reads the files again at start, where a bad one would panic. A configuration reload
/// replaces it ([`CurrentCertificate::replace`]): handshakes from then on get the new one, and
/// connections already open keep the session they have.
#[derive(Debug)]
pub struct CurrentCertificate(ArcSwap<CertifiedKey>);

impl CurrentCertificate {
    pub fn new(certified: Arc<CertifiedKey>) -> Self {
        Self(ArcSwap::new(certified))
    }

    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        self.0.store(certified);
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, JwtKey};
    use jsonwebtoken::{encode, EncodingKey, Header};

    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/jwt-rs256-test-only.key");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/jwt-rs256.pub");
    const RSA_PKCS1_PUBLIC: &str = include_str!("../tests/fixtures/jwt-rs256-pkcs1.pub");
    const RSA_1024_PUBLIC: &str = include_str!("../tests/fixtures/jwt-rsa1024.pub");

    /// True when `pem` verifies a token signed by `signing` with `algorithm`.
    fn verifies(pem: &str, algorithm: Algorithm, signing: &EncodingKey) -> bool {
        let key = JwtKey::public_pem(pem.as_bytes()).expect("a usable key");
        assert_eq!(key.algorithm, algorithm);
        let auth = AuthConfig {
            keys: vec![key],
            cookie: "c".into(),
            query: "q".into(),
            audience: None,
            secret_env: None,
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 60;
        let token = encode(
            &Header::new(algorithm),
            &serde_json::json!({"exp": exp}),
            signing,
        )
        .expect("sign");
        auth.verify(&token).is_ok()
    }

    #[test]
    fn public_keys_and_certificates_verify_tokens() {
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("RSA key");
        assert!(verifies(RSA_PUBLIC, Algorithm::RS256, &rsa));
        assert!(verifies(RSA_PKCS1_PUBLIC, Algorithm::RS256, &rsa));

        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let ec_signing = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("EC key");
        assert!(verifies(
            &ec.public_key_pem(),
            Algorithm::ES256,
            &ec_signing
        ));
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|params| params.self_signed(&ec))
            .expect("certificate");
        assert!(verifies(&cert.pem(), Algorithm::ES256, &ec_signing));
    }

    #[test]
    fn keys_that_would_refuse_every_token_are_config_errors() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let cases = [
            (p256.serialize_pem(), "private key"),
            (RSA_PRIVATE.to_owned(), "private key"),
            (RSA_1024_PUBLIC.to_owned(), "1024-bit RSA key"),
            (p384.public_key_pem(), "P-384"),
            (ed25519.public_key_pem(), "Ed25519"),
            ("not a key".to_owned(), "no PEM public key"),
            (String::new(), "no PEM public key"),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
                "cannot be parsed",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".to_owned(),
                "not valid PEM",
            ),
        ];
        for (pem, expected) in cases {
            let error = jwt_public_key(pem.as_bytes()).err().unwrap_or_default();
            assert!(error.contains(expected), "{pem}: {error:?}");
        }
    }

    #[test]
    fn tls_pairs_are_loaded_and_matched() {
        let server =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let (cert, key) = (server.cert.pem(), server.key_pair.serialize_pem());
        assert!(tls_certified_key(cert.as_bytes(), key.as_bytes()).is_ok());

        let other = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .expect("key")
            .serialize_pem();
        let cases = [
            ("garbage", key.as_str(), TlsFile::Cert, "no certificate"),
            (key.as_str(), key.as_str(), TlsFile::Cert, "no certificate"),
            (cert.as_str(), "garbage", TlsFile::Key, "no private key"),
            (cert.as_str(), cert.as_str(), TlsFile::Key, "no private key"),
            (
                cert.as_str(),
                other.as_str(),
                TlsFile::Key,
                "does not match",
            ),
            (
                cert.as_str(),
                ed25519.as_str(),
                TlsFile::Key,
                "does not match",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                key.as_str(),
                TlsFile::Cert,
                "cannot be used",
            ),
        ];
        for (cert, key, file, expected) in cases {
            match tls_certified_key(cert.as_bytes(), key.as_bytes()) {
                Err((which, message)) => {
                    assert_eq!(which, file, "{message}");
                    assert!(message.contains(expected), "{message}");
                }
                Ok(_) => panic!("accepted: {cert} / {key}"),
            }
        }
    }
}
