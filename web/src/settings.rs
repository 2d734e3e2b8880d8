//! hirte-web's settings: `[hirte-web]` in `/etc/hirte/web.conf` (and `web.conf.d/*.conf`,
//! then `-c FILE`, then command-line flags), read with common's layered config reader
//! (`Settings` + `load_layers`), so the syntax and the error messages are those of the
//! daemons' files.

use hirte_common::config::{load_layers, ConfigError, Entry, LogConfig, RawValue, Settings};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// Where the HTTP server listens (`ListenAddress=`).
    pub listen: SocketAddr,
    /// `LogLevel=`, `LogTarget=` (`LogIsQuiet` is not a key here: nothing is quiet to hide).
    pub log: LogConfig,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log: LogConfig::default(),
        }
    }
}

fn bad(e: &Entry, reason: impl ToString) -> ConfigError {
    let value = match &e.value {
        RawValue::Str(s) => s.clone(),
        RawValue::List(l) => l.join(","),
    };
    ConfigError::BadValue {
        at: e.at.clone(),
        key: e.key.clone(),
        value,
        reason: reason.to_string(),
    }
}

fn single(e: &Entry) -> Result<&str, ConfigError> {
    match &e.value {
        RawValue::Str(s) => Ok(s),
        RawValue::List(_) => Err(bad(e, "expected a single value, not a list")),
    }
}

impl Settings for WebSettings {
    const SECTION: &'static str = "hirte-web";
    const FILE_BASE: &'static str = "web";

    fn apply_entry(&mut self, e: &Entry) -> Result<(), ConfigError> {
        self.apply(e)
    }

    fn log_settings(&self) -> &LogConfig {
        &self.log
    }
}

impl WebSettings {
    pub fn load(dir: &Path, extra: Option<&Path>) -> Result<Self, ConfigError> {
        load_layers(dir, extra)
    }

    // [impl->req~web.config~1]
    pub fn apply(&mut self, e: &Entry) -> Result<(), ConfigError> {
        match e.key.as_str() {
            "ListenAddress" => {
                self.listen = single(e)?
                    .parse()
                    .map_err(|_| bad(e, "expected IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)"))?;
                if self.listen.port() == 0 {
                    return Err(bad(e, "the port must be from 1 to 65535"));
                }
            }
            "LogLevel" => self.log.level = single(e)?.parse().map_err(|r| bad(e, r))?,
            "LogTarget" => self.log.target = single(e)?.parse().map_err(|r| bad(e, r))?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    at: e.at.clone(),
                    key: e.key.clone(),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hirte_common::config::{cli_entry, parse_text};

    fn from_text(text: &str) -> Result<WebSettings, ConfigError> {
        let mut s = WebSettings::default();
        for e in parse_text(text, "web.conf", WebSettings::SECTION)? {
            s.apply(&e)?;
        }
        Ok(s)
    }

    // [utest->req~web.config~1]
    #[test]
    fn defaults_and_keys() {
        assert_eq!(WebSettings::default().listen.to_string(), "127.0.0.1:8080");
        let s = from_text(
            "[hirte-web]\nListenAddress=0.0.0.0:9090\nLogLevel=debug\nLogTarget=stderr\n",
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            (s.log.level, s.log.target),
            (
                hirte_common::log::Level::Debug,
                hirte_common::log::Target::Stderr
            )
        );
        let s = from_text("[hirte-web]\nListenAddress = \"[::1]:8081\"\n").unwrap();
        assert_eq!(s.listen.to_string(), "[::1]:8081");
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = from_text("[hirte-web]\nListenAddress=localhost\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.conf:2: key 'ListenAddress': invalid value 'localhost': expected IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)"
        );
        let e = from_text("[hirte-web]\nListenAddress=127.0.0.1:0\n").unwrap_err();
        assert!(e.to_string().contains("1 to 65535"), "{e}");
        let e = from_text("[hirte-web]\nPort=1\n").unwrap_err();
        assert_eq!(e.to_string(), "web.conf:2: unknown key 'Port'");
        let e = from_text("[hirte]\nListenAddress=1.2.3.4:5\n").unwrap_err();
        assert!(e.to_string().contains("unknown section [hirte]"), "{e}");
        let mut s = WebSettings::default();
        let e = s.apply(&cli_entry("ListenAddress", "x")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command line: key 'ListenAddress'"),
            "{e}"
        );
    }
}
