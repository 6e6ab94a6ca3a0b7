//! One text encoding of a [`Record`] for stores that keep it as a single
//! value (Redis, the sealed cookie): a header line of numbers, then the
//! subject and the data as they are, so the JSON is never escaped twice.
//!
//! `1 <created_at> <expires_at> <seen_at> <expiry> <subject bytes>\n<subject><data>`
//! where `<expiry>` is `d` (default), `b` (browser close) or `i<seconds>`.
//! `expires_at` is the second field on purpose: Redis scripts read it with a
//! pattern to cap a key's time to live.

use super::{Expiry, Record};

/// A stored value that is not a record this version wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored session is not in the expected format: {0}")]
pub struct WireError(&'static str);

impl Record {
    /// The record as one text value.
    pub fn encode(&self) -> String {
        let subject = self.subject.as_deref().unwrap_or("");
        let expiry = match self.expiry {
            Expiry::Default => "d".to_owned(),
            Expiry::BrowserClose => "b".to_owned(),
            Expiry::Idle(secs) => format!("i{secs}"),
        };
        format!(
            "1 {} {} {} {expiry} {}\n{subject}{}",
            self.created_at,
            self.expires_at,
            self.seen_at,
            subject.len(),
            self.data
        )
    }

    /// Reads a value written by [`Record::encode`].
    pub fn decode(text: &str) -> Result<Record, WireError> {
        let (head, rest) = text.split_once('\n').ok_or(WireError("no header line"))?;
        let mut fields = head.split(' ');
        let mut next = |what| fields.next().ok_or(WireError(what));
        if next("version")? != "1" {
            return Err(WireError("unknown version"));
        }
        let number = |s: &str, what| s.parse::<i64>().map_err(|_| WireError(what));
        let created_at = number(next("created_at")?, "created_at")?;
        let expires_at = number(next("expires_at")?, "expires_at")?;
        let seen_at = number(next("seen_at")?, "seen_at")?;
        let expiry = match next("expiry")? {
            "d" => Expiry::Default,
            "b" => Expiry::BrowserClose,
            other => other
                .strip_prefix('i')
                .and_then(|n| n.parse().ok())
                .map(Expiry::Idle)
                .ok_or(WireError("expiry"))?,
        };
        let subject_len: usize = next("subject length")?
            .parse()
            .map_err(|_| WireError("subject length"))?;
        if fields.next().is_some() {
            return Err(WireError("extra header fields"));
        }
        if !rest.is_char_boundary(subject_len.min(rest.len())) || subject_len > rest.len() {
            return Err(WireError("subject length"));
        }
        let (subject, data) = rest.split_at(subject_len);
        // Exactly one JSON object: the token embeds the data verbatim, so a
        // stored value must not be able to close the object and add claims.
        if !data.starts_with('{') || serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
            return Err(WireError("data is not a JSON object"));
        }
        Ok(Record {
            data: data.into(),
            created_at,
            expires_at,
            expiry,
            seen_at,
            subject: (!subject.is_empty()).then(|| subject.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expiry: Expiry, subject: Option<&str>, data: &str) -> Record {
        Record {
            data: data.into(),
            created_at: 1_700_000_000,
            expires_at: 1_700_001_209,
            expiry,
            seen_at: 1_700_000_500,
            subject: subject.map(Into::into),
        }
    }

    #[test]
    fn round_trips_every_shape() {
        for r in [
            record(Expiry::Default, None, "{}"),
            record(Expiry::BrowserClose, Some("user:7"), r#"{"a":"\n1 2"}"#),
            record(Expiry::Idle(30), Some("Zoë 🦀\nx"), r#"{"ü":"ß"}"#),
        ] {
            let text = r.encode();
            assert_eq!(Record::decode(&text).unwrap(), r, "{text}");
        }
    }

    #[test]
    fn expires_at_is_the_second_field() {
        let text = record(Expiry::Default, None, "{}").encode();
        assert!(text.starts_with("1 1700000000 1700001209 "), "{text}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{}",
            "2 1 2 3 d 0\n{}",
            "1 1 2 3 x 0\n{}",
            "1 1 2 3 d 9\n{}",
            "1 1 2 3 d 1\n\u{e9}{}",
            "1 a 2 3 d 0\n{}",
            "1 1 2 3 d 0 7\n{}",
            "1 1 2 3 d 0\n[]",
            "1 1 2 3 d 0\n{\"a\":1},\"exp\":9999999999,\"x\":{",
            "1 1 2 3 d 0\n{\"a\":",
        ] {
            assert!(Record::decode(bad).is_err(), "{bad:?}");
        }
    }
}
