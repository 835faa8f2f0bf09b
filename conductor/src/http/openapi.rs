//! The OpenAPI 3.1 document served at `/openapi.json`. Its operations are written by hand in
//! `openapi.json` beside this file; every schema under `components/schemas` is generated here from
//! the types the handlers read and answer with, so a field added, renamed or made optional in the
//! code is in the document too, and a path naming a type that is gone fails the tests below.

use std::sync::OnceLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value};

use crate::domain::preview::{Preview, PreviewRequest};
use crate::domain::test_send::{TestSendReport, TestSendRequest};
use crate::domain::validate::CampaignRequest;
use crate::http::governor::{CampaignView, GovernorView, Plan};
use crate::http::payloads::{
    CampaignList, Created, MinuteList, RecipientPage, Requeued, RetryRequest,
};
use crate::http::problem::Problem;
use crate::store::Campaign;

const PREFIX: &str = "#/components/schemas/";

/// The document, built on first use.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| build().to_string())
}

fn build() -> Value {
    let mut doc: Value =
        serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is valid JSON");
    doc["components"]["schemas"] = Value::Object(schemas());
    doc
}

fn generator(settings: SchemaSettings) -> SchemaGenerator {
    settings
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// Answers are described as they are serialized and request bodies as they are read: a field
/// with a default is required in an answer (it is always written) and optional in a request.
fn schemas() -> Map<String, Value> {
    let mut answers = generator(SchemaSettings::draft2020_12().for_serialize());
    answers.subschema_for::<Problem>();
    answers.subschema_for::<Campaign>();
    answers.subschema_for::<CampaignView>();
    answers.subschema_for::<CampaignList>();
    answers.subschema_for::<Created>();
    answers.subschema_for::<RecipientPage>();
    answers.subschema_for::<Requeued>();
    answers.subschema_for::<MinuteList>();
    answers.subschema_for::<Plan>();
    answers.subschema_for::<GovernorView>();
    answers.subschema_for::<Preview>();
    answers.subschema_for::<TestSendReport>();
    let mut out = answers.take_definitions(true);

    let mut requests = generator(SchemaSettings::draft2020_12().for_deserialize());
    requests.subschema_for::<CampaignRequest>();
    requests.subschema_for::<RetryRequest>();
    requests.subschema_for::<PreviewRequest>();
    requests.subschema_for::<TestSendRequest>();
    let mut read = requests.take_definitions(true);
    // A type both written and read whose two descriptions differ (a defaulted field) is named
    // twice: the way it is read gets `Input` after its name.
    let clashes: Vec<String> = read
        .iter()
        .filter(|(name, schema)| out.get(*name).is_some_and(|s| s != *schema))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &clashes {
        let schema = read.remove(name).expect("listed above");
        read.insert(format!("{name}Input"), schema);
    }
    for schema in read.values_mut() {
        rename_refs(schema, &clashes);
    }
    for (name, schema) in read {
        out.entry(name).or_insert(schema);
    }
    out
}

fn rename_refs(v: &mut Value, renamed: &[String]) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(PREFIX) {
                    if renamed.iter().any(|n| n == name) {
                        *r = format!("{r}Input");
                    }
                }
            }
            m.values_mut().for_each(|v| rename_refs(v, renamed));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rename_refs(v, renamed)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// The strings a string enum's schema allows (`enum`, or a `oneOf` of `enum`s and `const`s).
    fn allowed<'a>(schema: &'a Value) -> Vec<&'a str> {
        let strings = |v: &'a Value| v.as_array().into_iter().flatten().filter_map(Value::as_str);
        let mut out: Vec<&str> = strings(&schema["enum"]).collect();
        for alt in schema["oneOf"].as_array().into_iter().flatten() {
            out.extend(strings(&alt["enum"]));
            out.extend(alt["const"].as_str());
        }
        out
    }

    /// Follows a local `$ref` (a JSON pointer).
    fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
        doc.pointer(r.strip_prefix('#')?)
    }

    #[test]
    fn every_reference_resolves_and_every_schema_is_used() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        let mut missing: Vec<&str> = all
            .iter()
            .copied()
            .filter(|r| resolve(&doc, r).is_none())
            .collect();
        missing.dedup();
        assert!(missing.is_empty(), "refs to nothing: {missing:?}");
        // From the operations, everything under components/schemas is reachable.
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = Vec::new();
        refs(&doc["paths"], &mut todo);
        refs(&doc["components"]["responses"], &mut todo);
        while let Some(r) = todo.pop() {
            if seen.insert(r) {
                refs(resolve(&doc, r).unwrap(), &mut todo);
            }
        }
        for name in doc["components"]["schemas"].as_object().unwrap().keys() {
            assert!(
                seen.contains(format!("{PREFIX}{name}").as_str()),
                "schema {name} is generated but no operation uses it"
            );
        }
    }

    #[test]
    fn schemas_follow_the_types() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let s = &doc["components"]["schemas"];
        // A campaign answer always holds its counts; a field with a default is optional to send.
        let required = |name: &str| -> Vec<String> {
            serde_json::from_value(s[name]["required"].clone()).unwrap_or_default()
        };
        assert!(required("Campaign").contains(&"counts".to_string()));
        assert!(required("Counts").contains(&"requests".to_string()));
        assert_eq!(required("CampaignRequest"), ["name", "from"]);
        assert_eq!(s["CampaignRequest"]["additionalProperties"], false);
        // Read and written, a window is described both ways: `timezone` has a default when read.
        assert!(required("SendWindow").contains(&"timezone".to_string()));
        assert_eq!(required("SendWindowInput"), ["hours"]);
        let states = allowed(&s["RecipientState"]);
        for st in crate::domain::recipient::RecipientState::ALL {
            assert!(states.contains(&st.as_str()), "{st:?} in {states:?}");
        }
        assert_eq!(
            states.len(),
            crate::domain::recipient::RecipientState::ALL.len()
        );
        let statuses = allowed(&s["Status"]);
        assert!(statuses.contains(&"importing") && statuses.contains(&"completed"));
        assert!(
            !statuses.contains(&"discarded"),
            "a discarded campaign is never shown"
        );
        assert_eq!(
            s["RetryRequest"]["properties"]["states"]["items"]["enum"],
            serde_json::json!(["failed", "unknown"])
        );
    }
}
