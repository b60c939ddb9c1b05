//! `minerwatch-collector certs`: a test CA and certificates for a quick start with mutual
//! TLS. For production, certificates come from the site's own CA; these files are the same
//! shape (PEM certificate + PEM key per party, one CA file everybody trusts).
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("making certificate for {name}: {source}")]
    Make { name: String, source: rcgen::Error },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists; refusing to overwrite keys (use another --out or remove it)")]
    Exists { path: PathBuf },
    #[error("bad name `{0}`: use letters, digits, '.', '-' and '_'")]
    BadName(String),
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)
}

fn leaf(
    name: &str,
    alt_names: Vec<String>,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<(String, String), CertError> {
    let make = |source| CertError::Make {
        name: name.to_string(),
        source,
    };
    let mut params = CertificateParams::new(alt_names).map_err(make)?;
    params.distinguished_name.push(DnType::CommonName, name);
    // Sensors are clients of collectors and servers of their own TCP API: both uses.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(make)?;
    let cert = params.signed_by(&key, ca).map_err(make)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `ca.pem`, `ca-key.pem`, `collector.pem`/`collector-key.pem` (valid for
/// `collector_names`, plus localhost and 127.0.0.1) and `<node>.pem`/`<node>-key.pem` for
/// each sensor node. Returns the files written.
pub fn make(
    out: &Path,
    collector_names: &[String],
    nodes: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    for n in collector_names.iter().chain(nodes) {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(CertError::BadName(n.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let mut files: Vec<(PathBuf, String, u32)> = Vec::new();
    let make_err = |source| CertError::Make {
        name: "CA".into(),
        source,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(make_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "minerwatch test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(make_err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, ca_key).map_err(make_err)?;
    files.push((out.join("ca.pem"), ca.pem(), 0o644));
    files.push((out.join("ca-key.pem"), ca_key_pem, 0o600));
    let mut names: Vec<String> = collector_names.to_vec();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    let (cert, key) = leaf("collector", names, &ca)?;
    files.push((out.join("collector.pem"), cert, 0o644));
    files.push((out.join("collector-key.pem"), key, 0o600));
    for node in nodes {
        let (cert, key) = leaf(node, vec![node.clone(), "localhost".into()], &ca)?;
        files.push((out.join(format!("{node}.pem")), cert, 0o644));
        files.push((out.join(format!("{node}-key.pem")), key, 0o600));
    }
    if let Some((p, _, _)) = files.iter().find(|(p, _, _)| p.exists()) {
        return Err(CertError::Exists { path: p.clone() });
    }
    for (path, text, mode) in &files {
        write(path, text, *mode)?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}
