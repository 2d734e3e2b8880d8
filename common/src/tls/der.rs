//! Just enough DER to read what the link's identity rule needs from an X.509 certificate:
//! the subject's common name, the subjectAltName dNSNames (and whether that extension exists)
//! and the end of the validity period. Chain, signature, EKU and CRL checks are rustls-webpki's;
//! this only reads a certificate that webpki has already accepted (or, for log lines, one it
//! refused). Sans-IO; every malformed input is an error, never a panic.

use std::fmt;

/// What could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError(&'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed certificate: {}", self.0)
    }
}

impl std::error::Error for DerError {}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
const DNS_NAME: u8 = 0x82;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// One DER element at a time from a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// The next element: (tag, contents).
    fn next(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.0.split_first().ok_or(DerError("truncated"))?;
        let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError("unsupported length"));
            }
            let (bytes, after) = rest
                .split_at_checked(n)
                .ok_or(DerError("truncated length"))?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (body, after) = rest.split_at_checked(len).ok_or(DerError("truncated"))?;
        self.0 = after;
        Ok((tag, body))
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        match self.next()? {
            (t, body) if t == tag => Ok(body),
            _ => Err(DerError(what)),
        }
    }
}

/// The parts of a certificate the identity rule and the log lines use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertNames {
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// Whether the certificate has a subjectAltName extension at all.
    pub has_san: bool,
    /// The subjectAltName dNSName entries (IA5 text).
    pub dns_names: Vec<String>,
    /// End of the validity period, seconds since the epoch.
    pub not_after: i64,
}

/// Reads a DER X.509 certificate.
pub fn parse_certificate(der: &[u8]) -> Result<CertNames, DerError> {
    let cert = Reader(der).expect(SEQUENCE, "not a SEQUENCE")?;
    let mut tbs = Reader(Reader(cert).expect(SEQUENCE, "no tbsCertificate")?);
    if tbs.peek_tag() == Some(VERSION) {
        tbs.next()?;
    }
    tbs.next()?; // serialNumber
    tbs.expect(SEQUENCE, "no signature algorithm")?;
    tbs.expect(SEQUENCE, "no issuer")?;
    let mut validity = Reader(tbs.expect(SEQUENCE, "no validity")?);
    validity.next()?; // notBefore
    let not_after = match validity.next()? {
        (UTC_TIME, t) => parse_time(t, false)?,
        (GENERALIZED_TIME, t) => parse_time(t, true)?,
        _ => return Err(DerError("bad notAfter")),
    };
    let subject = tbs.expect(SEQUENCE, "no subject")?;
    tbs.expect(SEQUENCE, "no subject public key")?;
    let mut names = CertNames {
        common_name: common_name(subject)?,
        not_after,
        ..CertNames::default()
    };
    while !tbs.is_empty() {
        let (tag, body) = tbs.next()?;
        if tag != EXTENSIONS {
            continue;
        }
        let mut exts = Reader(Reader(body).expect(SEQUENCE, "bad extensions")?);
        while !exts.is_empty() {
            let mut ext = Reader(exts.expect(SEQUENCE, "bad extension")?);
            let oid = ext.expect(OID, "bad extension id")?;
            if ext.peek_tag() == Some(BOOLEAN) {
                ext.next()?;
            }
            let value = ext.expect(OCTET_STRING, "bad extension value")?;
            if oid == OID_SAN {
                names.has_san = true;
                let mut general = Reader(Reader(value).expect(SEQUENCE, "bad subjectAltName")?);
                while !general.is_empty() {
                    if let (DNS_NAME, name) = general.next()? {
                        names
                            .dns_names
                            .push(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The first CN of a Name (its contents, without the outer SEQUENCE header).
pub fn common_name(name: &[u8]) -> Result<Option<String>, DerError> {
    let mut rdns = Reader(name);
    while !rdns.is_empty() {
        let mut set = Reader(rdns.expect(SET, "bad name")?);
        while !set.is_empty() {
            let mut atv = Reader(set.expect(SEQUENCE, "bad name attribute")?);
            let oid = atv.expect(OID, "bad attribute type")?;
            let (_, value) = atv.next()?;
            if oid == OID_CN {
                return Ok(Some(String::from_utf8_lossy(value).into_owned()));
            }
        }
    }
    Ok(None)
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` to seconds since the epoch.
fn parse_time(t: &[u8], generalized: bool) -> Result<i64, DerError> {
    let bad = DerError("bad time");
    let digits = t.strip_suffix(b"Z").ok_or(bad.clone())?;
    if digits.len() != if generalized { 14 } else { 12 } || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let num = |from: usize, len: usize| -> i64 {
        digits
            .iter()
            .skip(from)
            .take(len)
            .fold(0, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, at) = if generalized {
        (num(0, 4), 4)
    } else {
        let yy = num(0, 2);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    };
    let (month, day) = (num(at, 2), num(at + 2, 2));
    let (h, m, s) = (num(at + 4, 2), num(at + 6, 2), num(at + 8, 2));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(DerError("bad date"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_expiry_of_generated_certificates() {
        let mut p = rcgen::CertificateParams::new(vec!["agent1".into(), "other".into()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "agent-cn");
        p.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let n = parse_certificate(cert.der()).unwrap();
        assert_eq!(n.common_name.as_deref(), Some("agent-cn"));
        assert!(n.has_san);
        assert_eq!(n.dns_names, ["agent1", "other"]);
        assert_eq!(n.not_after, 1_930_348_800); // 2031-03-04T00:00:00Z

        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "only-cn");
        let n = parse_certificate(p.self_signed(&key).unwrap().der()).unwrap();
        assert_eq!(
            (n.common_name.as_deref(), n.has_san),
            (Some("only-cn"), false)
        );
    }

    #[test]
    fn times_convert_like_date() {
        assert_eq!(parse_time(b"700101000000Z", false), Ok(0));
        assert_eq!(parse_time(b"20380119031408Z", true), Ok(2_147_483_648));
        assert_eq!(parse_time(b"491231235959Z", false), Ok(2_524_607_999));
        assert!(parse_time(b"7001010000Z", false).is_err());
        assert!(parse_time(b"701301000000Z", false).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x01",
            b"\x30\x02\x30\x05",
            b"\x04\x00",
        ] {
            assert!(parse_certificate(bytes).is_err());
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            assert!(parse_certificate(der.get(..cut).unwrap()).is_err());
        }
    }
}
