//! TLS for PostgreSQL connections, with libpq's `sslmode` meanings.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` and verifies nothing itself; libpq's
//! `verify-ca` and `verify-full` are what a production database asks for. So `sslmode` and
//! `sslrootcert` are taken out of the URL here and turned into a rustls configuration:
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | – |
//! | `allow`, `prefer` (default) | when the server offers it | no |
//! | `require` | always | no, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | signed by a root in `sslrootcert` |
//! | `verify-full` | always | signed by a root in `sslrootcert`, and names the host |
//!
//! `sslrootcert` is a PEM file, or `system` for the operating system's store; without it,
//! `verify-ca`/`verify-full` use `~/.postgresql/root.crt` as libpq does. `pg_dump`, `pg_restore`
//! and `psql` are handed the same settings (`PGSSLMODE`, `PGSSLROOTCERT`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Mode::Disable,
            "allow" => Mode::Allow,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Allow => "allow",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of one database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    mode: Mode,
    /// `sslmode` was written in the URL (else libpq's default, `prefer`, applies).
    mode_given: bool,
    /// `sslrootcert` as written: a path, or `system`.
    root_cert: Option<String>,
}

/// Parses a `postgres://` URL into tokio-postgres's configuration and the TLS settings, which
/// tokio-postgres is not given (it would reject `verify-ca`, `verify-full` and `sslrootcert`).
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls), String> {
    let mut tls = Tls {
        mode: Mode::Prefer,
        mode_given: false,
        root_cert: None,
    };
    let rest = match url.split_once('?') {
        None => url.to_string(),
        Some((base, query)) => {
            let mut kept = Vec::new();
            for param in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                let value = || {
                    percent_decode_str(value)
                        .decode_utf8()
                        .map(|v| v.into_owned())
                        .map_err(|_| format!("the value of `{key}` is not valid UTF-8"))
                };
                match key {
                    "sslmode" => {
                        tls.mode = Mode::parse(&value()?)?;
                        tls.mode_given = true;
                    }
                    "sslrootcert" => tls.root_cert = Some(value()?),
                    "sslcert" | "sslkey" | "sslpassword" => {
                        return Err(format!(
                            "`{key}`: client certificates are not supported; \
                             authenticate with a password or another method"
                        ))
                    }
                    _ => kept.push(param),
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
    };
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        // tokio-postgres says what is wrong (an unknown option, a bad value) in the source.
        match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }
    })?;
    config.ssl_mode(match tls.mode {
        Mode::Disable => SslMode::Disable,
        Mode::Allow | Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    Ok((config, tls))
}

impl Tls {
    /// The connector for tokio-postgres: rustls with the certificate checks `sslmode` asks for.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let check_chain = match self.mode {
            Mode::VerifyCa | Mode::VerifyFull => true,
            // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
            Mode::Require => self.root_cert.is_some(),
            Mode::Disable | Mode::Allow | Mode::Prefer => false,
        };
        let config = if check_chain {
            let roots = Arc::new(self.roots()?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS set-up: {e}"))?;
            if self.mode == Mode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            }
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
        };
        Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
    }

    /// The roots `sslrootcert` names (or libpq's default file).
    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        if self.root_cert.as_deref() == Some("system") {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert=system: no certificate found in the system's store{}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            return Ok(roots);
        }
        let path = match &self.root_cert {
            Some(path) => PathBuf::from(path),
            None => {
                let default = std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
                match default {
                    Some(path) if path.exists() => path,
                    _ => {
                        return Err(format!(
                            "sslmode={} checks the server's certificate against a root \
                             certificate: name one with sslrootcert=PATH (a PEM file), use \
                             sslrootcert=system for the system's store, or put it in \
                             ~/.postgresql/root.crt",
                            self.mode.name()
                        ))
                    }
                }
            }
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!(
                    "sslrootcert {}: not a usable root certificate: {e}",
                    path.display()
                )
            })?;
        }
        if roots.is_empty() {
            return Err(format!(
                "sslrootcert {}: no PEM certificate in the file",
                path.display()
            ));
        }
        Ok(roots)
    }

    /// The same settings for libpq's tools (`pg_dump`, `pg_restore`, `psql`).
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if self.mode_given {
            env.push(("PGSSLMODE", self.mode.name().to_string()));
        }
        if let Some(root) = &self.root_cert {
            env.push(("PGSSLROOTCERT", root.clone()));
        }
        env
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // The chain is checked before the name: a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: encrypted, the certificate not checked (as libpq). The
/// handshake's signatures are still verified, so the session is bound to the presented key.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_the_url() {
        let (config, tls) = parse(
            "postgres://app@db.example:6543/prod?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_dbname(), Some("prod"));
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            tls.libpq_env(),
            vec![
                ("PGSSLMODE", "verify-full".to_string()),
                ("PGSSLROOTCERT", "/etc/ca.pem".to_string())
            ]
        );
    }

    #[test]
    fn default_is_prefer_and_hands_libpq_nothing() {
        let (config, tls) = parse("postgres://app@db/prod").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(tls.mode, Mode::Prefer);
        assert!(tls.libpq_env().is_empty());
        let (config, _) = parse("postgres://app@db/prod?sslmode=disable").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn unknown_sslmode_is_named() {
        let err = parse("postgres://db/prod?sslmode=verify").unwrap_err();
        assert!(err.contains("sslmode `verify`"), "{err}");
    }

    #[test]
    fn unsupported_options_are_named() {
        let err = parse("postgres://db/prod?sslcert=/c.pem").unwrap_err();
        assert!(
            err.contains("`sslcert`: client certificates are not supported"),
            "{err}"
        );
        let err = parse("postgres://db/prod?sslcompression=1").unwrap_err();
        assert!(err.contains("sslcompression"), "{err}");
    }

    #[test]
    fn verify_without_a_root_says_how_to_give_one() {
        let (_, mut tls) = parse("postgres://db/prod?sslmode=verify-ca").unwrap();
        tls.root_cert = Some("/nonexistent/root.pem".to_string());
        let err = tls.connector().err().unwrap_or_default();
        assert!(
            err.contains("cannot read sslrootcert /nonexistent/root.pem"),
            "{err}"
        );
    }
}
