//! The certificates and keys a local control plane needs, generated fresh per start with rcgen
//! (ring backend, the same crypto as kube's rustls):
//!
//! - a CA (`CA:TRUE`) that signs everything else and that clients trust;
//! - the kube-apiserver serving leaf: `CA:FALSE`, EKU serverAuth, SANs `IP:127.0.0.1` and
//!   `DNS:localhost` — rustls accepts it under both names;
//! - an admin client certificate in group `system:masters` (full access without RBAC setup);
//! - the service-account signing key pair (ECDSA P-256, PKCS#8) for the apiserver and the
//!   controller-manager.
//!
//! All files are PEM; private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::local::error::{LocalError, Result};

/// The admin identity's user name (certificate CN).
pub const ADMIN_USER: &str = "harmony-admin";
/// The admin identity's group: bound to `cluster-admin` by the apiserver's bootstrap policy.
pub const ADMIN_GROUP: &str = "system:masters";

/// Paths of the generated PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// CA certificate: `--client-ca-file`, the kubeconfig's certificate authority, KCM's
    /// `--root-ca-file`.
    pub ca_cert: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// Serving certificate of kube-apiserver.
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// Admin client certificate (`O=system:masters`).
    pub admin_cert: PathBuf,
    /// Its private key.
    pub admin_key: PathBuf,
    /// Service-account signing key (private, PKCS#8).
    pub service_account_key: PathBuf,
    /// Service-account verification key (public, SPKI).
    pub service_account_pub: PathBuf,
}

impl PkiFiles {
    /// Generates a fresh CA, serving leaf, admin client certificate and service-account key pair
    /// into `dir` (created if needed), overwriting earlier files.
    pub fn generate(dir: &Path) -> Result<Self> {
        Self::generate_with_names(dir, &[])
    }

    /// [`PkiFiles::generate`] with `extra_names` (IP addresses or DNS names) added to the
    /// serving certificate's SANs — a local node reaches the apiserver at its link address and
    /// Pods at the `kubernetes` Service.
    pub fn generate_with_names(dir: &Path, extra_names: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LocalError::io(format!("creating {}", dir.display()), e))?;
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("apiserver.crt"),
            server_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };

        let issuer = new_ca("harmony-local-ca", &files.ca_cert, &files.ca_key)?;

        let server_key = KeyPair::generate()?;
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut server = CertificateParams::new(names)?;
        server.distinguished_name = name("kube-apiserver", None);
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &issuer)?;
        write(&files.server_cert, &server_cert.pem(), false)?;
        write(&files.server_key, &server_key.serialize_pem(), true)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::default();
        admin.distinguished_name = name(ADMIN_USER, Some(ADMIN_GROUP));
        admin.is_ca = IsCa::ExplicitNoCa;
        admin.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        admin.use_authority_key_identifier_extension = true;
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;
        write(&files.admin_cert, &admin_cert.pem(), false)?;
        write(&files.admin_key, &admin_key.serialize_pem(), true)?;

        let sa_key = KeyPair::generate()?;
        write(&files.service_account_key, &sa_key.serialize_pem(), true)?;
        write(&files.service_account_pub, &sa_key.public_key_pem(), false)?;

        Ok(files)
    }
}

/// A CA and a serving certificate for `127.0.0.1` / `localhost` (a local nats-server's TLS),
/// generated once and kept: clients keep trusting the same CA across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// CA certificate clients trust.
    pub ca_cert: PathBuf,
    /// Serving certificate.
    pub server_cert: PathBuf,
    /// Its private key (0600).
    pub server_key: PathBuf,
}

impl ServerTls {
    /// The files in `dir`, generated if any is missing (CA key 0600 beside them), for
    /// `127.0.0.1` and `localhost` only.
    pub fn load_or_generate(dir: &Path, server_name: &str) -> Result<Self> {
        Self::load_or_generate_for(dir, server_name, &[])
    }

    /// As [`load_or_generate`](Self::load_or_generate), the serving certificate also naming
    /// `extra_names` (addresses or DNS names where other hosts reach the server, e.g. a LAN
    /// address). The names are kept in `server.names`; when they change, the serving
    /// certificate is issued again by the kept CA, so clients keep trusting the same CA.
    pub fn load_or_generate_for(
        dir: &Path,
        server_name: &str,
        extra_names: &[String],
    ) -> Result<Self> {
        let files = ServerTls {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        let ca_key = dir.join("ca.key");
        let names_file = dir.join("server.names");
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        for name in extra_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let wanted = names.join("\n");
        // A directory from before `server.names` existed holds the default names.
        let recorded = match std::fs::read_to_string(&names_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "127.0.0.1\nlocalhost".to_owned(),
            Err(e) => {
                return Err(LocalError::io(
                    format!("reading {}", names_file.display()),
                    e,
                ));
            }
        };
        let complete =
            files.ca_cert.is_file() && files.server_cert.is_file() && files.server_key.is_file();
        if complete && recorded == wanted {
            return Ok(files);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| LocalError::io(format!("creating {}", dir.display()), e))?;
        let ca = if files.ca_cert.is_file() && ca_key.is_file() {
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .map_err(|e| LocalError::io(format!("reading {}", path.display()), e))
            };
            CaPem {
                cert: read(&files.ca_cert)?,
                key: read(&ca_key)?,
            }
        } else {
            let ca = CaPem::generate(&format!("{server_name}-ca"))?;
            write(&files.ca_cert, &ca.cert, false)?;
            write(&ca_key, &ca.key, true)?;
            ca
        };
        let server = ca.issue_server(server_name, &names)?;
        write(&files.server_cert, &server.cert, false)?;
        write(&files.server_key, &server.key, true)?;
        write(&names_file, &wanted, false)?;
        Ok(files)
    }
}

/// A CA as PEM text, held in memory: where the files live is the caller's business (a local
/// directory, or a cluster's Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The CA certificate (PEM).
    pub cert: String,
    /// Its private key (PKCS#8 PEM).
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// A certificate issued by a [`CaPem`], with its key, as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPem {
    /// The certificate (PEM).
    pub cert: String,
    /// Its private key (PKCS#8 PEM).
    pub key: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl CaPem {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let cert = ca_params(common_name).self_signed(&key)?;
        Ok(CaPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A serving certificate for `names` (DNS names, wildcards or IP addresses), usable by
    /// servers that also dial each other (EKU serverAuth and clientAuth: NATS routes present
    /// their serving certificate as clients).
    pub fn issue_server(&self, common_name: &str, names: &[String]) -> Result<CertPem> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name(common_name, None);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// The CA as an issuer: its key, and its subject read back from the certificate (so a CA
    /// made elsewhere, e.g. a platform's own, signs certificates that chain to it).
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert, key)?)
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name(common_name, None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
}

/// A self-signed CA named `common_name`, written to `cert` and `key` (0600).
fn new_ca(common_name: &str, cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>> {
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(common_name);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(cert, &ca_cert.pem(), false)?;
    write(key, &ca_key.serialize_pem(), true)?;
    Ok(Issuer::new(ca_params, ca_key))
}

fn name(common_name: &str, organization: Option<&str>) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LocalError::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| LocalError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_files_with_private_keys_unreadable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = PkiFiles::generate(dir.path()).expect("generate");
        for cert in [&pki.ca_cert, &pki.server_cert, &pki.admin_cert] {
            let text = std::fs::read_to_string(cert).expect("read");
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
        for key in [
            &pki.ca_key,
            &pki.server_key,
            &pki.admin_key,
            &pki.service_account_key,
        ] {
            let text = std::fs::read_to_string(key).expect("read");
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
            let mode = std::fs::metadata(key).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
        }
        let public = std::fs::read_to_string(&pki.service_account_pub).expect("read");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    }

    #[test]
    fn server_tls_is_generated_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ServerTls::load_or_generate(dir.path(), "nats").expect("generate");
        let ca = std::fs::read_to_string(&first.ca_cert).expect("ca");
        let again = ServerTls::load_or_generate(dir.path(), "nats").expect("load");
        assert_eq!(first, again);
        assert_eq!(
            std::fs::read_to_string(&again.ca_cert).expect("ca"),
            ca,
            "kept"
        );
        let mode = std::fs::metadata(&first.server_key)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn new_server_names_reissue_the_serving_certificate_under_the_kept_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ServerTls::load_or_generate(dir.path(), "nats").expect("generate");
        let ca = std::fs::read_to_string(&first.ca_cert).expect("ca");
        let cert = std::fs::read_to_string(&first.server_cert).expect("cert");
        let names = ["10.213.7.1".to_owned()];
        let lan = ServerTls::load_or_generate_for(dir.path(), "nats", &names).expect("reissue");
        assert_eq!(std::fs::read_to_string(&lan.ca_cert).expect("ca"), ca);
        let reissued = std::fs::read_to_string(&lan.server_cert).expect("cert");
        assert_ne!(reissued, cert, "a new serving certificate");
        ServerTls::load_or_generate_for(dir.path(), "nats", &names).expect("load");
        assert_eq!(
            std::fs::read_to_string(&lan.server_cert).expect("cert"),
            reissued,
            "same names: kept"
        );
    }

    #[test]
    fn a_ca_made_elsewhere_issues_server_certificates_that_chain_to_it() {
        let ca = CaPem::generate("platform-ca").expect("ca");
        let names = vec![
            "fleet-nats.fleet-system.svc".to_owned(),
            "*.fleet-nats-headless.fleet-system.svc".to_owned(),
        ];
        let server = ca.issue_server("fleet-nats", &names).expect("issue");
        assert!(server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key.starts_with("-----BEGIN PRIVATE KEY-----"));
        // A CA read back from its PEM (what a Secret holds) still issues.
        let again = CaPem {
            cert: ca.cert.clone(),
            key: ca.key.clone(),
        };
        again
            .issue_server("fleet-nats", &names)
            .expect("issue again");
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
        assert!(
            !format!("{server:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
    }
}
