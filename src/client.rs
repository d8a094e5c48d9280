//! The librdkafka settings every Kafka client of the daemon shares — the consumer, the alert and
//! dead-letter producer, the pre-flight of `run --check`: brokers, TLS, SASL, pass-through options.
//!
//! One function builds them so that a client can never connect differently from the others (a
//! consumer over TLS and a producer in plain text). Secrets are read here, from a file or an
//! environment variable, at the moment a client is created; they live only inside librdkafka's
//! configuration and never in `Config`, logs, metrics or `--check` output (`describe` names the
//! settings without them).
//!
//! This build of librdkafka has OpenSSL (TLS, SCRAM), Cyrus SASL (GSSAPI/Kerberos) and libcurl
//! (OAUTHBEARER through OIDC); `build_info` says what the linked library reports.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;

use crate::config::{KafkaConfig, SaslConfig, TlsConfig};

/// Client settings for `brokers`, with `cfg`'s security and pass-through options. Relative paths
/// are resolved from `base` (the config file's folder). Fails, naming the setting, when a file or
/// environment variable it needs is missing.
pub fn client_config(
    cfg: &KafkaConfig,
    brokers: &str,
    base: &Path,
) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("security.protocol", protocol(cfg));
    if let Some(t) = &cfg.tls {
        tls(&mut c, t, base)?;
    }
    if let Some(s) = &cfg.sasl {
        sasl(&mut c, s, base)?;
    }
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    Ok(c)
}

/// librdkafka's `security.protocol` for the typed settings.
pub fn protocol(cfg: &KafkaConfig) -> &'static str {
    match (cfg.tls.is_some(), cfg.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

/// How the clients connect, for logs and `--check`: protocol, files and user, never a secret.
pub fn describe(cfg: &KafkaConfig) -> String {
    let mut out = protocol(cfg).to_string();
    if let Some(t) = &cfg.tls {
        match &t.ca {
            Some(ca) => out += &format!(", CA {}", ca.display()),
            None => out += ", CA: system trust store",
        }
        if let Some(cert) = &t.cert {
            out += &format!(", client certificate {}", cert.display());
        }
        if t.verify_hostname == Some(false) {
            out += ", host names not verified";
        }
    }
    if let Some(s) = &cfg.sasl {
        out += &format!(", {}", s.mechanism.to_ascii_uppercase());
        if let Some(u) = &s.username {
            out += &format!(" as {u:?}");
        }
        match (&s.password_file, &s.password_env) {
            (Some(f), _) => out += &format!(" (secret from {})", f.display()),
            (_, Some(e)) => out += &format!(" (secret from ${e})"),
            _ => {}
        }
    }
    out
}

/// The files the settings name, with their setting, resolved from `base`: what `run --check`
/// looks for.
pub fn files(cfg: &KafkaConfig, base: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    if let Some(t) = &cfg.tls {
        for (name, p) in [
            ("kafka.tls.ca", &t.ca),
            ("kafka.tls.cert", &t.cert),
            ("kafka.tls.key", &t.key),
        ] {
            if let Some(p) = p {
                out.push((name, base.join(p)));
            }
        }
    }
    if let Some(s) = &cfg.sasl {
        for (name, p) in [
            ("kafka.sasl.password_file", &s.password_file),
            ("kafka.sasl.kerberos_keytab", &s.kerberos_keytab),
        ] {
            if let Some(p) = p {
                out.push((name, base.join(p)));
            }
        }
    }
    out
}

fn tls(c: &mut ClientConfig, t: &TlsConfig, base: &Path) -> anyhow::Result<()> {
    for (name, key, p) in [
        ("kafka.tls.ca", "ssl.ca.location", &t.ca),
        ("kafka.tls.cert", "ssl.certificate.location", &t.cert),
        ("kafka.tls.key", "ssl.key.location", &t.key),
    ] {
        if let Some(p) = p {
            c.set(key, readable(name, &base.join(p))?);
        }
    }
    c.set(
        "ssl.endpoint.identification.algorithm",
        if t.verify_hostname.unwrap_or(true) {
            "https"
        } else {
            "none"
        },
    );
    Ok(())
}

fn sasl(c: &mut ClientConfig, s: &SaslConfig, base: &Path) -> anyhow::Result<()> {
    let mechanism = s.mechanism.to_ascii_uppercase();
    c.set("sasl.mechanisms", &mechanism);
    match mechanism.as_str() {
        "OAUTHBEARER" => {
            c.set("sasl.oauthbearer.method", "oidc")
                .set(
                    "sasl.oauthbearer.client.id",
                    s.username.as_deref().unwrap_or_default(),
                )
                .set("sasl.oauthbearer.client.secret", secret(s, base)?)
                .set(
                    "sasl.oauthbearer.token.endpoint.url",
                    s.token_endpoint.as_deref().unwrap_or_default(),
                );
            if let Some(scope) = &s.scope {
                c.set("sasl.oauthbearer.scope", scope);
            }
        }
        "GSSAPI" => {
            c.set(
                "sasl.kerberos.service.name",
                s.kerberos_service_name.as_deref().unwrap_or("kafka"),
            );
            if let Some(p) = &s.kerberos_principal {
                c.set("sasl.kerberos.principal", p);
            }
            if let Some(k) = &s.kerberos_keytab {
                c.set(
                    "sasl.kerberos.keytab",
                    readable("kafka.sasl.kerberos_keytab", &base.join(k))?,
                );
            }
        }
        _ => {
            c.set("sasl.username", s.username.as_deref().unwrap_or_default())
                .set("sasl.password", secret(s, base)?);
        }
    }
    Ok(())
}

/// The password or client secret, from its file or environment variable.
fn secret(s: &SaslConfig, base: &Path) -> anyhow::Result<String> {
    let value = match (&s.password_file, &s.password_env) {
        (Some(f), _) => {
            let path = base.join(f);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("kafka.sasl.password_file: cannot read {}", path.display())
            })?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.strip_suffix('\r').unwrap_or(text).to_string()
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) => v,
            Err(_) => bail!("kafka.sasl.password_env: the environment variable {var} is not set"),
        },
        (None, None) => bail!("kafka.sasl: no password_file or password_env"),
    };
    if value.is_empty() {
        bail!("kafka.sasl: the password is empty");
    }
    Ok(value)
}

/// The path as librdkafka wants it, once it is known to be a readable file.
fn readable(setting: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::File::open(path)
        .with_context(|| format!("{setting}: cannot read {}", path.display()))?;
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{setting}: {} is not UTF-8", path.display()))
}

/// The linked librdkafka: its version and the features it was built with (`builtin.features`).
pub fn build_info() -> (String, String) {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = ClientConfig::new()
        .create_native_config()
        .ok()
        .and_then(|c| c.get("builtin.features").ok())
        .unwrap_or_default();
    (version, features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn kafka(toml_text: &str) -> KafkaConfig {
        let c: Config = toml::from_str(toml_text).unwrap();
        c.kafka
    }

    #[test]
    fn this_build_speaks_tls_and_every_sasl_mechanism_offered() {
        let (_, features) = build_info();
        for f in [
            "ssl",
            "sasl_scram",
            "sasl_gssapi",
            "sasl_oauthbearer",
            "oidc",
        ] {
            assert!(
                features.split(',').any(|x| x == f),
                "{f} missing from {features}"
            );
        }
    }

    #[test]
    fn secrets_come_from_a_file_or_the_environment_and_never_show() {
        let dir = std::env::temp_dir().join(format!("cdrguard-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret-from-file\n").unwrap();
        let k = kafka(
            "[kafka.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"alice\"\npassword_file = \"pw\"\n",
        );
        let c = client_config(&k, "b:9092", &dir).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-file"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
        let shown = describe(&k);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");

        std::env::set_var("CDRGUARD_TEST_CLIENT_PW", "s3cret-from-env");
        let k = kafka(
            "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\npassword_env = \"CDRGUARD_TEST_CLIENT_PW\"\n",
        );
        let c = client_config(&k, "b:9092", &dir).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-env"));

        let k = kafka(
            "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"a\"\npassword_env = \"CDRGUARD_TEST_CLIENT_UNSET\"\n",
        );
        let e = client_config(&k, "b:9092", &dir).unwrap_err().to_string();
        assert!(e.contains("CDRGUARD_TEST_CLIENT_UNSET is not set"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_inline_password_or_a_secret_option_is_refused() {
        let c: Config = toml::from_str(
            "[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"a\"\npassword = \"hunter2\"\n[kafka.options]\n\"ssl.key.password\" = \"x\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("kafka.sasl.password: a password in the configuration file is refused"),
            "{e}"
        );
        assert!(e.contains("kafka.options.ssl.key.password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn tls_files_must_exist_and_protocol_follows_the_settings() {
        let k = kafka("[kafka.tls]\nca = \"/nonexistent/ca.pem\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"a\"\npassword_env = \"X\"\n");
        assert_eq!(protocol(&k), "sasl_ssl");
        let e = client_config(&k, "b:9093", Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.tls.ca: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let c: Config = toml::from_str("[kafka.sasl]\nmechanism = \"KERBEROS\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("kafka.sasl.mechanism: \"KERBEROS\" is not one of"),
            "{e}"
        );
    }
}
