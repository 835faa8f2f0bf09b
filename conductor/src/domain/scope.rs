//! What a row of the minute ledger caps: the provider account, one campaign, or one recipient
//! domain. Stored and shown as `global`, `campaign:{id}` and `domain:{name}`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The provider account: every request counts here.
    Global,
    /// A campaign's own `per_minute`.
    Campaign(String),
    /// A recipient domain's cap (`[governor.domains]`), across all campaigns.
    Domain(String),
    /// Test sends (`POST /v1/campaigns/{id}/test`): every one is also a `global` token, and this
    /// row shows how many of a minute's went to tests.
    Test,
}

impl Scope {
    /// The stored or requested form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "global" => return Some(Self::Global),
            "test" => return Some(Self::Test),
            _ => {}
        }
        let (kind, name) = s.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "campaign" => Some(Self::Campaign(name.to_string())),
            "domain" => Some(Self::Domain(name.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("global"),
            Self::Test => f.write_str("test"),
            Self::Campaign(id) => write!(f, "campaign:{id}"),
            Self::Domain(d) => write!(f, "domain:{d}"),
        }
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for Scope {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scope".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "What a ledger row caps: `global`, `campaign:{id}` or `domain:{name}`; `test` counts test sends (each also a `global` token).",
            "type": "string",
            "pattern": "^(global|test|campaign:.+|domain:.+)$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_back_what_they_write() {
        for s in [
            Scope::Global,
            Scope::Campaign("c01".into()),
            Scope::Domain("gmail.com".into()),
            Scope::Test,
        ] {
            assert_eq!(Scope::parse(&s.to_string()), Some(s));
        }
        assert_eq!(Scope::Domain("x.org".into()).to_string(), "domain:x.org");
        for bad in [
            "",
            "globals",
            "tests",
            "test:",
            "campaign:",
            "domain",
            "user:x",
            "Global",
        ] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }
}
