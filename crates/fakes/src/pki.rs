//! A throw-away certificate authority and server certificates for any host names.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA, and one server certificate valid for every name it was made with.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// Trust store holding only this CA.
    pub roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    /// The CA certificate in PEM, for tools such as curl (`--cacert`).
    pub ca_pem: String,
    /// The leaf certificate in PEM (what a server's `tls.crt` holds).
    pub cert_pem: String,
    /// The leaf's private key in PEM (`tls.key`).
    pub key_pem: String,
}

impl TestPki {
    /// Makes a CA and a leaf certificate for `names`.
    pub fn new(names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate().expect("invariant: key generation works");
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .expect("invariant: empty SAN list is valid");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "proxy-telemetry test CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .expect("invariant: CA self-signs");
        let issuer = Issuer::new(ca_params, ca_key);

        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf_key = KeyPair::generate().expect("invariant: key generation works");
        let leaf_params =
            CertificateParams::new(names).expect("invariant: test host names are valid");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("invariant: CA signs the leaf");

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .expect("invariant: a fresh CA certificate parses");
        TestPki {
            roots: Arc::new(roots),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: Arc::new(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// A server configuration from PEM files (a certificate chain and its key), offering `alpn`.
    pub fn server_config_from_pem(
        cert: &[u8],
        key: &[u8],
        alpn: &[&str],
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A server configuration offering `alpn`.
    pub fn server_config(&self, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("invariant: ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(
            self.chain.clone(),
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
        .expect("invariant: the leaf and its key match");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}
