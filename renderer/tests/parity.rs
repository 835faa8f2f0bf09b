//! The renderer against handlebars.js itself: templates brought from handlebars.js tools must print
//! the same. Each case is rendered here, through the same data path as a real send
//! (`renderer::job::context`), and by handlebars.js 4.7 under Node (`tests/handlebars_js`, installed
//! with `npm ci` the first time, like the dashboard test's playwright-core). Without Node the test
//! says it did not run, unless `REQUIRE_BROWSER` is set (as `.ci/run` sets it: the dashboard test
//! needs Node as well).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use renderer::{CompiledTemplate, RecipientData, TemplateSource};

struct Case {
    template: &'static str,
    /// JSON text, as a list's `data` arrives: JavaScript reads it with `JSON.parse`.
    data: &'static str,
    partials: &'static [(&'static str, &'static str)],
}

const fn case(template: &'static str, data: &'static str) -> Case {
    Case {
        template,
        data,
        partials: &[],
    }
}

/// Common constructs of marketing templates. Keys of an object looped with `{{#each}}` are given
/// in sorted order: JavaScript keeps insertion order, this renderer's data keeps keys sorted.
const CASES: &[Case] = &[
    case(
        "Hello {{name}}, your total is {{total}} for {{count}} items",
        r#"{"name": "Zoë", "total": 3.0, "count": 2}"#,
    ),
    case(
        "{{a}}|{{b}}|{{c}}|{{d}}|{{e}}|{{f}}|{{g}}|{{h}}|{{i}}",
        r#"{"a": 19.90, "b": 0.1, "c": 1e21, "d": 0.000001, "e": 1e-7, "f": -0.0, "g": 100,
            "h": 1.5e300, "i": 20.0}"#,
    ),
    case(
        "{{s}} / {{{s}}} / {{&s}}",
        r#"{"s": "<b>\"Tom\" & 'Jerry'</b> = `x`"}"#,
    ),
    case("{{t}} {{f}}", r#"{"t": true, "f": false}"#),
    case(
        "{{#each items}}{{@index}}:{{title}} {{../currency}}{{price}}{{#if @first}} first{{/if}}{{#if @last}} last{{/if}};{{/each}}",
        r#"{"currency": "€", "items": [{"title": "Tea", "price": 3.0}, {"title": "Cake", "price": 2.5},
            {"title": "Jam", "price": 10}]}"#,
    ),
    case(
        "{{#each totals}}{{@key}}={{this}} {{/each}}",
        r#"{"totals": {"april": 12.0, "june": 0.5, "may": 7}}"#,
    ),
    case(
        "{{#if vip}}VIP{{else}}regular{{/if}} {{#unless opted}}not opted{{/unless}} {{#if zero}}z{{else}}nz{{/if}} {{#if empty}}e{{else}}ne{{/if}} {{#if blank}}b{{else}}nb{{/if}}",
        r#"{"vip": false, "opted": false, "zero": 0, "empty": [], "blank": ""}"#,
    ),
    case(
        "{{#with address}}{{city}}, {{country}} for {{../name}}{{/with}}",
        r#"{"name": "Ada", "address": {"city": "Zürich", "country": "CH"}}"#,
    ),
    case("{{lookup names idx}}", r#"{"names": ["a", "b", "c"], "idx": 1}"#),
    case("{{order.items.[0].name}} x{{order.items.[0].qty}}", r#"{"order": {"items": [{"name": "Pen", "qty": 2.0}]}}"#),
    case(
        "{{#each rows}}{{#each this}}{{@../index}}.{{@index}}={{this}} {{/each}}{{/each}}",
        r#"{"rows": [[1.0, 2], [3.5]]}"#,
    ),
    case("{{#each none}}x{{else}}nothing yet{{/each}}", r#"{"none": []}"#),
    case("a  {{~name~}}  b", r#"{"name": "Zoë"}"#),
    case("x{{!-- hidden {{name}} --}}y{{! also hidden }}z", r#"{"name": "n"}"#),
    case(
        "<table>{{#each rows}}\n  <tr><td>{{@index}}</td><td>{{this}}</td></tr>\n{{/each}}</table>",
        r#"{"rows": ["one", "two"]}"#,
    ),
    Case {
        template: "<div>{{> card title=headline}}{{> footer}}</div>",
        data: r#"{"headline": "Spring sale", "company": "ACME & Co"}"#,
        partials: &[
            ("card", "<h1>{{title}}</h1>"),
            ("footer", "<p>{{company}}</p>"),
        ],
    },
];

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/handlebars_js")
}

/// handlebars.js's output for every case, or `None` where there is no Node.
fn handlebars_js(cases: &[Case]) -> Option<Vec<String>> {
    if Command::new("node").arg("--version").output().is_err() {
        let hint = "Node.js (node, npm) is needed for the handlebars.js parity test";
        assert!(std::env::var_os("REQUIRE_BROWSER").is_none(), "{hint}");
        eprintln!("NOT RUN: the handlebars.js parity test. {hint}");
        return None;
    }
    let dir = node_dir();
    if !dir.join("node_modules/handlebars").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    let input = serde_json::Value::Array(
        cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "template": c.template,
                    "data": c.data,
                    "partials": c.partials.iter().copied().collect::<BTreeMap<_, _>>(),
                })
            })
            .collect(),
    );
    let mut child = Command::new("node")
        .arg("render.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "render.mjs failed");
    Some(serde_json::from_slice(&out.stdout).expect("render.mjs prints a JSON array"))
}

fn ours(c: &Case) -> String {
    let data: serde_json::Value = serde_json::from_str(c.data).unwrap();
    let template = CompiledTemplate::compile(&TemplateSource {
        subject: "s".into(),
        html: c.template.into(),
        text: Some("t".into()),
        partials: c
            .partials
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_string()))
            .collect(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", c.template));
    let recipient = RecipientData {
        id: 1,
        email: "zoe@example.org".into(),
        name: None,
        data,
        unsubscribe: None,
        web_url: None,
        tracking: None,
    };
    template
        .render(renderer::job::context(&recipient))
        .unwrap_or_else(|e| panic!("{}: {e}", c.template))
        .html
}

#[test]
fn common_constructs_render_as_handlebars_js_renders_them() {
    let Some(expected) = handlebars_js(CASES) else {
        return;
    };
    let differ: Vec<String> = CASES
        .iter()
        .zip(&expected)
        .filter_map(|(c, js)| {
            let got = ours(c);
            (got != *js).then(|| {
                format!(
                    "{}\n  handlebars.js: {js:?}\n  here:          {got:?}",
                    c.template
                )
            })
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(expected.len(), CASES.len());
}
