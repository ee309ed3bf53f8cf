//! TLS settings for `amqps://` endpoints: extra certificate authorities to
//! trust besides the system's.

use std::fmt;

use lapin::tcp::OwnedTLSConfig;

use crate::error::{Error, Result};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The TLS side of a [`BrokerConfig`](super::BrokerConfig).
///
/// `Debug` names how many extra authorities are trusted, never their text.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    /// PEM certificates trusted on top of the system's roots.
    ca_pem: Option<String>,
}

impl TlsSettings {
    /// Checks that `pem` holds at least one PEM certificate, and nothing
    /// that looks like a private key (a key pasted by mistake must not be
    /// kept and handed around).
    pub(crate) fn with_ca_pem(pem: String) -> Result<Self> {
        if pem.contains("PRIVATE KEY-----") {
            return Err(Error::Config(
                "tls_ca_pem holds a private key; give only the CA's certificate".into(),
            ));
        }
        let blocks = count_certificates(&pem);
        if blocks == 0 {
            return Err(Error::Config(format!(
                "tls_ca_pem holds no PEM certificate (expected a '{BEGIN}' ... '{END}' block)"
            )));
        }
        Ok(Self { ca_pem: Some(pem) })
    }

    /// What lapin's connector takes: the system's roots plus these.
    pub(crate) fn lapin_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        }
    }
}

/// Complete `BEGIN`/`END` certificate blocks with some content between.
fn count_certificates(pem: &str) -> usize {
    let mut rest = pem;
    let mut count = 0;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(end) = after.find(END) else { break };
        if !after[..end].trim().is_empty() {
            count += 1;
        }
        rest = &after[end + END.len()..];
    }
    count
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_pem {
            None => f.write_str("TlsSettings { extra_cas: 0 }"),
            Some(pem) => write!(
                f,
                "TlsSettings {{ extra_cas: {} }}",
                count_certificates(pem)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_must_be_a_pem_certificate_and_never_a_key() {
        let cert = format!("{BEGIN}\nMIIB\n{END}\n");
        let ok = TlsSettings::with_ca_pem(format!("{cert}{cert}")).expect("two certificates");
        assert_eq!(format!("{ok:?}"), "TlsSettings { extra_cas: 2 }");
        assert!(ok.lapin_config().cert_chain.is_some());
        for bad in [
            "",
            "not pem",
            &format!("{BEGIN}\n{END}"),
            &format!("{BEGIN}\nMIIB"),
        ] {
            let err = TlsSettings::with_ca_pem(bad.to_owned()).expect_err(bad);
            assert!(err.to_string().contains("no PEM certificate"), "{err}");
        }
        let key = format!("{cert}-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----");
        let err = TlsSettings::with_ca_pem(key).expect_err("a key");
        assert!(err.to_string().contains("private key"), "{err}");
        assert!(!err.to_string().contains("MC4C"), "{err}");
    }
}
