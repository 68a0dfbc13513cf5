//! The contract's field annotations and the server's validation agree (issue 12, point 4).
//!
//! The rules are read from the descriptor set that reflection serves ([`FILE_DESCRIPTOR_SET`],
//! so what `grpcurl describe` shows is what is tested): `google.api.field_behavior` and
//! `buf.validate` on every field of every request message. Each rule is interpreted here with
//! protovalidate's meaning (lengths in code points or bytes, RE2 patterns, `ignore`,
//! `required`, enum and timestamp rules, the one message-level CEL rule); a rule this file does
//! not know fails the test, so none can go unchecked. Then, starting from valid requests of
//! each RPC, every field is set in turn to probe values (the rules' own boundaries, a corpus of
//! awkward strings, numbers at and past each bound, every enum number, absent messages) and the
//! fields the annotations refuse must be exactly the fields the server's own validation names
//! (`convert::enroll_command`, `card_id`, `watch_request`, `token_event`). Every rule must be
//! broken by at least one probe, and `REQUIRED` must mean "the zero value is refused".
//!
//! Not annotations, so not compared: whether `program` is configured, and the `event_time`
//! window around the server's clock (settings; the comments say so). Timestamps whose `nanos`
//! are outside 0..=999_999_999 are not valid `google.protobuf.Timestamp`s and are not probed.

use super::convert::{self, EventTimeBounds};
use crate::proto::{FILE_DESCRIPTOR_SET, SERVICE_NAME, v1 as pb};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value,
};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};

const PACKAGE: &str = "c2p.enrollment.v1";

/// `google.api.FieldBehavior` numbers.
const OPTIONAL: i32 = 1;
const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;

/// The message-level CEL rules the test knows: id, expression (exactly), the field the server
/// names when the rule is broken, and the rule in Rust.
struct CelRule {
    id: &'static str,
    expression: &'static str,
    server_field: &'static str,
    holds: fn(&DynamicMessage) -> bool,
}

const CEL_RULES: &[CelRule] = &[CelRule {
    id: "email_or_mobile_number",
    expression: "this.email != '' || has(this.mobile_number)",
    server_field: "email",
    holds: |m| {
        m.get_field_by_name("email")
            .is_some_and(|v| v.as_str() != Some(""))
            || m.has_field_by_name("mobile_number")
    },
}];

/// One rule of one field, as protovalidate means it.
#[derive(Debug)]
enum Check {
    MinLen(usize),
    MaxLen(usize),
    MaxBytes(usize),
    Pattern(Regex),
    /// protovalidate's own definition (validate.proto, `string.uuid`).
    Uuid,
    Gte(i64),
    Lte(i64),
    Gt(i64),
    Lt(i64),
    DefinedOnly(BTreeSet<i32>),
    NotIn(Vec<i32>),
    /// Timestamp bounds as (seconds, nanos).
    TsGte((i64, i32)),
    TsLt((i64, i32)),
}

impl Check {
    /// The rule's protovalidate name, e.g. `string.max_len`.
    fn name(&self) -> &'static str {
        match self {
            Check::MinLen(_) => "string.min_len",
            Check::MaxLen(_) => "string.max_len",
            Check::MaxBytes(_) => "string.max_bytes",
            Check::Pattern(_) => "string.pattern",
            Check::Uuid => "string.uuid",
            Check::Gte(_) => "int64.gte",
            Check::Lte(_) => "int64.lte",
            Check::Gt(_) => "int64.gt",
            Check::Lt(_) => "int64.lt",
            Check::DefinedOnly(_) => "enum.defined_only",
            Check::NotIn(_) => "enum.not_in",
            Check::TsGte(_) => "timestamp.gte",
            Check::TsLt(_) => "timestamp.lt",
        }
    }

    fn holds(&self, v: &Value) -> bool {
        match (self, v) {
            (Check::MinLen(n), Value::String(s)) => s.chars().count() >= *n,
            (Check::MaxLen(n), Value::String(s)) => s.chars().count() <= *n,
            (Check::MaxBytes(n), Value::String(s)) => s.len() <= *n,
            (Check::Pattern(re), Value::String(s)) => re.is_match(s),
            (Check::Uuid, Value::String(s)) => {
                static UUID: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
                    Regex::new(
                        "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
                    )
                    .expect("uuid regex")
                });
                UUID.is_match(s)
            }
            (Check::Gte(b), Value::I64(x)) => x >= b,
            (Check::Lte(b), Value::I64(x)) => x <= b,
            (Check::Gt(b), Value::I64(x)) => x > b,
            (Check::Lt(b), Value::I64(x)) => x < b,
            (Check::DefinedOnly(defined), Value::EnumNumber(x)) => defined.contains(x),
            (Check::NotIn(list), Value::EnumNumber(x)) => !list.contains(x),
            (Check::TsGte(b), Value::Message(t)) => timestamp(t) >= *b,
            (Check::TsLt(b), Value::Message(t)) => timestamp(t) < *b,
            (check, value) => panic!("{} does not apply to {value:?}", check.name()),
        }
    }

    /// Values at and around the rule's bound, for a field whose valid value is `base`.
    fn probes(&self, base: &Value) -> Vec<Value> {
        let around = |b: i64| {
            [b.saturating_sub(1), b, b.saturating_add(1)]
                .map(Value::I64)
                .to_vec()
        };
        let lengths = |n: usize| [n.saturating_sub(1), n, n + 1];
        let text = |base: &Value| base.as_str().unwrap_or_default().to_owned();
        match self {
            Check::MinLen(n) | Check::MaxLen(n) => lengths(*n)
                .into_iter()
                .flat_map(|len| padded_chars(&text(base), len))
                .map(Value::String)
                .collect(),
            Check::MaxBytes(n) => lengths(*n)
                .into_iter()
                .flat_map(|len| padded_bytes(&text(base), len))
                .map(Value::String)
                .collect(),
            Check::Gte(b) | Check::Lte(b) | Check::Gt(b) | Check::Lt(b) => around(*b),
            Check::TsGte((s, n)) | Check::TsLt((s, n)) => {
                let mut out = Vec::new();
                for (s, n) in [(*s, *n), (s - 1, *n), (s + 1, *n)] {
                    out.push((s, n));
                    out.push((s, 999_999_999));
                    out.push((s, 0));
                }
                out.into_iter()
                    .map(|(s, n)| Value::Message(timestamp_value(s, n)))
                    .collect()
            }
            Check::Pattern(_) | Check::Uuid | Check::DefinedOnly(_) | Check::NotIn(_) => Vec::new(),
        }
    }
}

/// A field's rules.
#[derive(Debug, Default)]
struct Rules {
    required: bool,
    ignore_if_zero: bool,
    checks: Vec<Check>,
}

/// A rule broken by a request: the path the server should name, the rule's owner (a field's,
/// a oneof's or, for CEL rules, a message's full name) and the rule's name.
type Broken = (String, String, &'static str);

/// The contract's descriptor pool, decoded once.
fn pool() -> &'static DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("served descriptor set"))
}

struct Contract {
    pool: DescriptorPool,
    field_rules: ExtensionDescriptor,
    message_rules: ExtensionDescriptor,
    oneof_rules: ExtensionDescriptor,
    behavior: ExtensionDescriptor,
    /// The rules of each field, by the field's full name.
    rules: BTreeMap<String, Rules>,
}

impl Contract {
    fn load() -> Self {
        let pool = pool().clone();
        let ext = |name: &str| {
            pool.get_extension_by_name(name)
                .unwrap_or_else(|| panic!("the served descriptor set lacks {name}"))
        };
        let mut contract = Contract {
            field_rules: ext("buf.validate.field"),
            message_rules: ext("buf.validate.message"),
            oneof_rules: ext("buf.validate.oneof"),
            behavior: ext("google.api.field_behavior"),
            pool: pool.clone(),
            rules: BTreeMap::new(),
        };
        for message in pool.all_messages().filter(|m| m.package_name() == PACKAGE) {
            for field in message.fields() {
                let rules = contract.parse_rules(&field);
                contract.rules.insert(field.full_name().to_owned(), rules);
            }
        }
        contract
    }

    fn message(&self, name: &str) -> MessageDescriptor {
        self.pool
            .get_message_by_name(&format!("{PACKAGE}.{name}"))
            .unwrap_or_else(|| panic!("no message {name}"))
    }

    /// The field's `buf.validate.field` rules; a rule this test does not know panics.
    fn parse_rules(&self, field: &FieldDescriptor) -> Rules {
        let options = field.options();
        let mut rules = Rules::default();
        if !options.has_extension(&self.field_rules) {
            return rules;
        }
        let value = options.get_extension(&self.field_rules);
        let Some(message) = value.as_message() else {
            panic!("{}: buf.validate.field is not a message", field.full_name())
        };
        let unknown = |what: &str| -> ! {
            panic!(
                "{}: the rule {what} is not interpreted by this test: teach it the rule's \
                 meaning (and the server the rule) before annotating with it",
                field.full_name()
            )
        };
        for (rule, value) in message.fields() {
            match (rule.name(), value) {
                ("required", Value::Bool(b)) => rules.required = *b,
                ("ignore", Value::EnumNumber(1)) => rules.ignore_if_zero = true,
                ("string", Value::Message(m)) => {
                    for (r, v) in m.fields() {
                        let n = || usize::try_from(v.as_u64().expect("u64")).expect("length");
                        rules.checks.push(match (r.name(), v) {
                            ("min_len", _) => Check::MinLen(n()),
                            ("max_len", _) => Check::MaxLen(n()),
                            ("max_bytes", _) => Check::MaxBytes(n()),
                            ("pattern", Value::String(p)) => {
                                Check::Pattern(Regex::new(p).expect("RE2 pattern"))
                            }
                            ("uuid", Value::Bool(true)) => Check::Uuid,
                            (other, _) => unknown(&format!("string.{other}")),
                        });
                    }
                }
                ("int64", Value::Message(m)) => {
                    for (r, v) in m.fields() {
                        let b = v.as_i64().expect("i64");
                        rules.checks.push(match r.name() {
                            "gte" => Check::Gte(b),
                            "lte" => Check::Lte(b),
                            "gt" => Check::Gt(b),
                            "lt" => Check::Lt(b),
                            other => unknown(&format!("int64.{other}")),
                        });
                    }
                }
                ("enum", Value::Message(m)) => {
                    let Kind::Enum(e) = field.kind() else {
                        panic!("{}: enum rules on a non-enum", field.full_name())
                    };
                    for (r, v) in m.fields() {
                        rules.checks.push(match (r.name(), v) {
                            ("defined_only", Value::Bool(true)) => {
                                Check::DefinedOnly(e.values().map(|v| v.number()).collect())
                            }
                            ("not_in", Value::List(list)) => Check::NotIn(
                                list.iter().map(|v| v.as_i32().expect("i32")).collect(),
                            ),
                            (other, _) => unknown(&format!("enum.{other}")),
                        });
                    }
                }
                ("timestamp", Value::Message(m)) => {
                    for (r, v) in m.fields() {
                        let t = timestamp(v.as_message().expect("timestamp"));
                        rules.checks.push(match r.name() {
                            "gte" => Check::TsGte(t),
                            "lt" => Check::TsLt(t),
                            other => unknown(&format!("timestamp.{other}")),
                        });
                    }
                }
                (other, _) => unknown(other),
            }
        }
        rules
    }

    /// The field's `google.api.field_behavior` values.
    fn behavior(&self, field: &FieldDescriptor) -> Vec<i32> {
        let options = field.options();
        if !options.has_extension(&self.behavior) {
            return Vec::new();
        }
        match options.get_extension(&self.behavior).as_ref() {
            Value::List(list) => list.iter().filter_map(Value::as_enum_number).collect(),
            other => panic!("{}: field_behavior is {other:?}", field.full_name()),
        }
    }

    /// The message-level CEL rules of `message`, each matched to the test's own version.
    fn cel_rules(&self, message: &MessageDescriptor) -> Vec<&'static CelRule> {
        let options = message.options();
        if !options.has_extension(&self.message_rules) {
            return Vec::new();
        }
        let value = options.get_extension(&self.message_rules);
        let rules = value.as_message().expect("MessageRules");
        let mut out = Vec::new();
        for (field, value) in rules.fields() {
            let Value::List(list) = value else {
                panic!("{}: message rule {}", message.full_name(), field.name())
            };
            assert_eq!(
                field.name(),
                "cel",
                "{}: unknown message rule",
                message.full_name()
            );
            for rule in list {
                let rule = rule.as_message().expect("Rule");
                let text = |name: &str| {
                    rule.get_field_by_name(name)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                let (id, expression) = (text("id"), text("expression"));
                let known = CEL_RULES
                    .iter()
                    .find(|r| r.id == id)
                    .unwrap_or_else(|| panic!("{}: unknown CEL rule {id}", message.full_name()));
                assert_eq!(
                    known.expression,
                    expression,
                    "{}: the CEL rule {id} changed: change its Rust version here too",
                    message.full_name()
                );
                out.push(known);
            }
        }
        out
    }

    fn oneof_required(&self, oneof: &prost_reflect::OneofDescriptor) -> bool {
        let options = oneof.options();
        if !options.has_extension(&self.oneof_rules) {
            return false;
        }
        let value = options.get_extension(&self.oneof_rules);
        let rules = value.as_message().expect("OneofRules");
        let mut required = false;
        for (field, value) in rules.fields() {
            match (field.name(), value) {
                ("required", Value::Bool(b)) => required = *b,
                (other, _) => panic!("{}: unknown oneof rule {other}", oneof.full_name()),
            }
        }
        required
    }

    fn rules(&self, field: &FieldDescriptor) -> &Rules {
        &self.rules[field.full_name()]
    }

    /// Every rule that `message` breaks, as protovalidate would report it (message-level rules
    /// at the field the server names for them).
    fn broken(&self, message: &DynamicMessage, prefix: &str, out: &mut Vec<Broken>) {
        let desc = message.descriptor();
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            if self.oneof_required(&oneof) && !oneof.fields().any(|f| message.has_field(&f)) {
                out.push((
                    format!("{prefix}{}", oneof.name()),
                    oneof.full_name().to_owned(),
                    "oneof.required",
                ));
            }
        }
        for rule in self.cel_rules(&desc) {
            if !(rule.holds)(message) {
                out.push((
                    format!("{prefix}{}", rule.server_field),
                    desc.full_name().to_owned(),
                    rule.id,
                ));
            }
        }
        for field in desc.fields() {
            let path = format!("{prefix}{}", field.name());
            let rules = self.rules(&field);
            let set = message.has_field(&field);
            if field.containing_oneof().is_some() && !set {
                continue;
            }
            let value = message.get_field(&field);
            if let Kind::Message(m) = field.kind() {
                if !set {
                    if rules.required {
                        out.push((path, field.full_name().to_owned(), "required"));
                    }
                    continue;
                }
                for check in &rules.checks {
                    if !check.holds(&value) {
                        out.push((path.clone(), field.full_name().to_owned(), check.name()));
                    }
                }
                if m.package_name() == PACKAGE {
                    let nested = value.as_message().expect("message");
                    self.broken(nested, &format!("{path}."), out);
                }
                continue;
            }
            let zero = !set;
            if rules.required && zero {
                out.push((path.clone(), field.full_name().to_owned(), "required"));
            }
            if rules.ignore_if_zero && zero {
                continue;
            }
            for check in &rules.checks {
                if !check.holds(&value) {
                    out.push((path.clone(), field.full_name().to_owned(), check.name()));
                }
            }
        }
    }
}

fn timestamp(t: &DynamicMessage) -> (i64, i32) {
    let get = |name: &str| t.get_field_by_name(name).map(|v| v.into_owned());
    (
        get("seconds").and_then(|v| v.as_i64()).unwrap_or(0),
        get("nanos").and_then(|v| v.as_i32()).unwrap_or(0),
    )
}

fn timestamp_value(seconds: i64, nanos: i32) -> DynamicMessage {
    let bytes = prost_types::Timestamp { seconds, nanos }.encode_to_vec();
    let desc = pool()
        .get_message_by_name("google.protobuf.Timestamp")
        .expect("Timestamp");
    DynamicMessage::decode(desc, bytes.as_slice()).expect("timestamp")
}

/// `base` brought to `len` characters: padded in front with its own first character (so that it
/// keeps its shape, e.g. an e-mail address stays one) and with a two-byte character, or cut.
fn padded_chars(base: &str, len: usize) -> Vec<String> {
    let count = base.chars().count();
    if count >= len {
        return vec![base.chars().take(len).collect()];
    }
    let own = base.chars().next().unwrap_or('a');
    vec![
        format!("{}{base}", own.to_string().repeat(len - count)),
        format!("{}{base}", "é".repeat(len - count)),
    ]
}

/// `base` brought to `len` bytes, with one-byte and with two-byte characters in front.
fn padded_bytes(base: &str, len: usize) -> Vec<String> {
    if base.len() >= len {
        return Vec::new();
    }
    let own = base.chars().next().filter(char::is_ascii).unwrap_or('a');
    let missing = len - base.len();
    vec![
        format!("{}{base}", own.to_string().repeat(missing)),
        format!(
            "{}{}{base}",
            "é".repeat(missing / 2),
            own.to_string().repeat(missing % 2)
        ),
    ]
}

/// Awkward strings, tried on every string field.
#[rustfmt::skip]
const CORPUS: &[&[&str]] = &[
    // Blanks, controls, bidi overrides, other invisible and wide characters.
    &["", " ", "  ", "\t", "\u{3000}", "\u{a0}", "\u{2028}", "\u{200b}", "\u{feff}", "x", "X",
      "é", "😀", "0", "1", "a b", "a\nb", "nul\0", "\u{1b}[31m", "\u{85}", "\u{7f}",
      "\u{202e}rtl", "\u{2066}x", "\u{2069}"],
    // E-mail addresses.
    &["a@b.c", "A@B.CO", "a@b", "@b.c", "a@.b", "a@b.", "a@b..c", "a@b@c.de", "ü@x.de",
      "a b@c.de", "a@b.c ", " a@b.c", "a@b.c\u{a0}", "a\u{3000}b@c.de", "a@b.c\n",
      "a@\u{202e}b.c"],
    // UUIDs in and out of the hyphenated form.
    &["d03d5f0d-4ac1-46de-946a-82ad388a30e9", "D03D5F0D-4AC1-46DE-946A-82AD388A30E9",
      "{d03d5f0d-4ac1-46de-946a-82ad388a30e9}", "d03d5f0d4ac146de946a82ad388a30e9",
      "urn:uuid:d03d5f0d-4ac1-46de-946a-82ad388a30e9", "d03d5f0d-4ac1-46de-946a-82ad388a30eg",
      "d03d5f0d-4ac1-46de-946a-82ad388a30e", "d03d5f0d4-ac1-46de-946a-82ad388a30e9",
      " d03d5f0d-4ac1-46de-946a-82ad388a30e9", "d03d5f0d-4ac1-46de-946a-82ad388a30e9 "],
    // Languages and countries.
    &["en", "EN", "en_US", "en_us", "en-US", "eng", "en_USA", "US", "us", "USA", "U1", "É1"],
    // Phone numbers.
    &["01", "1234", "12345", "+1", "123", "12345678901234", "123456789012345", "555 1234",
      "５５５１２３４"],
    // Token fields, programs, wallets.
    &["DM4MMC0000000001", "a_b-C", "a.b", "50123197928", "501231979281", "5012319792a",
      "default", "gold", "p.1-x_y", "a/b", "MDES for Merchants", " MDES", "MDES "],
];

/// The values tried on `field`, whose valid value in the sample is `base`.
fn probes(field: &FieldDescriptor, rules: &Rules, base: &Value) -> Vec<Option<Value>> {
    let mut out: Vec<Option<Value>> = Vec::new();
    for check in &rules.checks {
        out.extend(check.probes(base).into_iter().map(Some));
    }
    match field.kind() {
        Kind::String => {
            let b = base.as_str().unwrap_or_default();
            out.extend(
                CORPUS
                    .iter()
                    .flat_map(|group| group.iter())
                    .map(|s| Some(Value::String((*s).to_owned()))),
            );
            for s in [
                format!(" {b}"),
                format!("{b} "),
                format!("\u{a0}{b}"),
                format!("{b}\n"),
                format!("{b}\u{202a}"),
                b.to_uppercase(),
                b.to_lowercase(),
            ] {
                out.push(Some(Value::String(s)));
            }
        }
        Kind::Int64 => {
            let b = base.as_i64().unwrap_or_default();
            for x in [0, 1, -1, 2, i64::MIN, i64::MAX, b - 1, b + 1] {
                out.push(Some(Value::I64(x)));
            }
        }
        Kind::Uint64 => {
            for x in [0, 1, u64::MAX] {
                out.push(Some(Value::U64(x)));
            }
        }
        Kind::Bool => out.extend([Some(Value::Bool(false)), Some(Value::Bool(true))]),
        Kind::Enum(e) => {
            let max = e.values().map(|v| v.number()).max().unwrap_or(0);
            for x in (-1..=max + 1).chain([99, i32::MAX]) {
                out.push(Some(Value::EnumNumber(x)));
            }
        }
        Kind::Message(m) => {
            out.push(None);
            if m.full_name() == "google.protobuf.Timestamp" {
                for s in [i64::MIN, -1, 0, 1, 2, 1_800_000_000, i64::MAX] {
                    for n in [0, 999_999_999] {
                        out.push(Some(Value::Message(timestamp_value(s, n))));
                    }
                }
            }
        }
        other => panic!("{}: no probes for {other:?}", field.full_name()),
    }
    out
}

/// The fields the server's validation names for a request, by the request's type.
fn server_verdict(message: &DynamicMessage) -> BTreeSet<String> {
    // Bounds so wide that only the store's own limit applies: the window is a setting.
    const ANY_TIME: EventTimeBounds = EventTimeBounds {
        max_future: std::time::Duration::from_secs(1 << 40),
        max_age: std::time::Duration::from_secs(1 << 40),
    };
    let bytes = message.encode_to_vec();
    let fields = |v: Vec<crate::app::FieldViolation>| v.into_iter().map(|v| v.field).collect();
    match message.descriptor().name() {
        "EnrollCardRequest" => {
            let req = pb::EnrollCardRequest::decode(bytes.as_slice()).expect("decode");
            convert::enroll_command(req, "caller".into(), |_| true)
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "GetEnrollmentStatusRequest" => {
            let req = pb::GetEnrollmentStatusRequest::decode(bytes.as_slice()).expect("decode");
            convert::card_id(req.card_contract_id)
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "WatchEnrollmentRequest" => {
            let req = pb::WatchEnrollmentRequest::decode(bytes.as_slice()).expect("decode");
            convert::watch_request(&req)
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "RemoveCardRequest" => {
            let req = pb::RemoveCardRequest::decode(bytes.as_slice()).expect("decode");
            convert::remove_command(req, "caller".into())
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "GetClickToPayProfileRequest" => {
            let req = pb::GetClickToPayProfileRequest::decode(bytes.as_slice()).expect("decode");
            card_verdict(req.card_contract_id)
        }
        "OptOutRequest" => {
            let req = pb::OptOutRequest::decode(bytes.as_slice()).expect("decode");
            card_verdict(req.card_contract_id)
        }
        "WithdrawOptOutRequest" => {
            let req = pb::WithdrawOptOutRequest::decode(bytes.as_slice()).expect("decode");
            card_verdict(req.card_contract_id)
        }
        "UpdateConsumerRequest" => {
            let req = pb::UpdateConsumerRequest::decode(bytes.as_slice()).expect("decode");
            convert::update_consumer_request(req)
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "UpdateBillingAddressRequest" => {
            let req = pb::UpdateBillingAddressRequest::decode(bytes.as_slice()).expect("decode");
            convert::update_billing_address_request(req)
                .err()
                .map(fields)
                .unwrap_or_default()
        }
        "NotificationIngestRequest" => {
            let req = pb::NotificationIngestRequest::decode(bytes.as_slice()).expect("decode");
            match convert::token_event(&req, ANY_TIME) {
                Ok(_) => BTreeSet::new(),
                // A message without a known event is refused as a whole (UNSUPPORTED_EVENT).
                Err(r) if r.reason == pb::NotificationRejectReason::UnsupportedEvent => {
                    BTreeSet::from(["event".to_owned()])
                }
                Err(r) => fields(r.violations),
            }
        }
        other => panic!("no server validation known for {other}"),
    }
}

/// The fields the server names for a request of a card id only.
fn card_verdict(id: i64) -> BTreeSet<String> {
    convert::card_id(id)
        .err()
        .map(|v| v.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Valid requests of every RPC (message name, encoding): each field of each is probed in turn.
/// Three EnrollCard requests, for the e-mail-or-mobile rule (both, e-mail only, mobile only) and
/// the optional fields (all set, all empty); one notification per event.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    use pb::notification_ingest_request::Event;
    let consumer = |email: &str, mobile: bool| pb::Consumer {
        email: email.into(),
        mobile_number: mobile.then(|| pb::PhoneNumber {
            country_code: "1".into(),
            phone_number: "5551234567".into(),
        }),
        first_name: "Jane".into(),
        last_name: "Doe".into(),
        country_code: "US".into(),
        language_code: "en_US".into(),
    };
    let enroll = |email: &str, mobile: bool, full: bool| {
        (
            "EnrollCardRequest",
            pb::EnrollCardRequest {
                idempotency_key: "key-1".into(),
                card_contract_id: 70001,
                program: if full { "gold".into() } else { String::new() },
                consumer: Some(consumer(email, mobile)),
                cardholder_full_name: if full {
                    "Jane Doe".into()
                } else {
                    String::new()
                },
                billing_address: full.then(|| pb::Address {
                    line1: "1 Main St".into(),
                    line2: "Apt 2".into(),
                    line3: "c/o Smith".into(),
                    city: "Springfield".into(),
                    state: "IL".into(),
                    zip: "62701".into(),
                    country_code: "US".into(),
                }),
                src_correlation_id: if full {
                    "d03d5f0d-4ac1-46de-946a-82ad388a30e9".into()
                } else {
                    String::new()
                },
                validate_only: full,
            }
            .encode_to_vec(),
        )
    };
    let notification = |event: Event| {
        (
            "NotificationIngestRequest",
            pb::NotificationIngestRequest {
                notification_id: "n-1".into(),
                event_time: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 5,
                }),
                sequence: 7,
                event: Some(event),
            }
            .encode_to_vec(),
        )
    };
    let (tur, trid, wallet) = ("DM4MMC0000000001", "50123197928", "MDES for Merchants");
    let address = |full: bool| pb::Address {
        line1: if full {
            "1 Main St".into()
        } else {
            String::new()
        },
        line2: if full { "Apt 2".into() } else { String::new() },
        line3: if full {
            "c/o Smith".into()
        } else {
            String::new()
        },
        city: if full {
            "Springfield".into()
        } else {
            String::new()
        },
        state: if full { "IL".into() } else { String::new() },
        zip: if full { "62701".into() } else { String::new() },
        country_code: "US".into(),
    };
    vec![
        (
            "RemoveCardRequest",
            pb::RemoveCardRequest {
                idempotency_key: "key-1".into(),
                card_contract_id: 70001,
                reason: pb::RemovalReason::CardClosed as i32,
            }
            .encode_to_vec(),
        ),
        (
            "GetClickToPayProfileRequest",
            pb::GetClickToPayProfileRequest {
                card_contract_id: 70001,
            }
            .encode_to_vec(),
        ),
        (
            "UpdateConsumerRequest",
            pb::UpdateConsumerRequest {
                card_contract_id: 70001,
                consumer: Some(consumer("jane.doe@example.com", true)),
            }
            .encode_to_vec(),
        ),
        (
            "UpdateConsumerRequest",
            pb::UpdateConsumerRequest {
                card_contract_id: 70001,
                consumer: Some(consumer("", true)),
            }
            .encode_to_vec(),
        ),
        (
            "UpdateBillingAddressRequest",
            pb::UpdateBillingAddressRequest {
                card_contract_id: 70001,
                billing_address: Some(address(true)),
            }
            .encode_to_vec(),
        ),
        (
            "UpdateBillingAddressRequest",
            pb::UpdateBillingAddressRequest {
                card_contract_id: 70001,
                billing_address: Some(address(false)),
            }
            .encode_to_vec(),
        ),
        (
            "OptOutRequest",
            pb::OptOutRequest {
                card_contract_id: 70001,
            }
            .encode_to_vec(),
        ),
        (
            "WithdrawOptOutRequest",
            pb::WithdrawOptOutRequest {
                card_contract_id: 70001,
            }
            .encode_to_vec(),
        ),
        enroll("jane.doe@example.com", true, true),
        enroll("jane.doe@example.com", false, false),
        enroll("", true, false),
        (
            "GetEnrollmentStatusRequest",
            pb::GetEnrollmentStatusRequest {
                card_contract_id: 70001,
                refresh: true,
            }
            .encode_to_vec(),
        ),
        (
            "WatchEnrollmentRequest",
            pb::WatchEnrollmentRequest {
                card_contract_id: 70001,
                start_after_revision: 5,
            }
            .encode_to_vec(),
        ),
        notification(Event::TokenizationAuthorization(
            pb::TokenizationAuthorization {
                card_contract_id: 70001,
                token_unique_reference: tur.into(),
                token_requestor_id: trid.into(),
                wallet_name: wallet.into(),
                decision: pb::TokenizationDecision::Approved as i32,
            },
        )),
        notification(Event::TokenizationComplete(pb::TokenizationComplete {
            card_contract_id: 70001,
            token_unique_reference: tur.into(),
            token_requestor_id: trid.into(),
            wallet_name: wallet.into(),
        })),
        notification(Event::TokenStatusChanged(pb::TokenStatusChanged {
            card_contract_id: 70001,
            token_unique_reference: tur.into(),
            token_requestor_id: trid.into(),
            wallet_name: wallet.into(),
            status: pb::TokenStatus::Active as i32,
            reason: "STATUS_UPDATE".into(),
        })),
    ]
}

/// Each field path of `message` that is set or settable: the message's own fields, and the
/// fields of its nested messages of this package that are set.
fn field_paths(
    message: &DynamicMessage,
    prefix: &[FieldDescriptor],
    out: &mut Vec<Vec<FieldDescriptor>>,
) {
    for field in message.descriptor().fields() {
        let mut path = prefix.to_vec();
        path.push(field.clone());
        if let Kind::Message(m) = field.kind()
            && m.package_name() == PACKAGE
            && message.has_field(&field)
        {
            let value = message.get_field(&field);
            field_paths(value.as_message().expect("message"), &path, out);
        }
        out.push(path);
    }
}

/// `message` with the field at `path` set to `value` (`None`: cleared).
fn with(
    message: &DynamicMessage,
    path: &[FieldDescriptor],
    value: Option<Value>,
) -> DynamicMessage {
    let mut out = message.clone();
    let mut at = &mut out;
    for field in &path[..path.len() - 1] {
        at = match at.get_field_mut(field) {
            Value::Message(m) => m,
            other => panic!("{} is {other:?}", field.full_name()),
        };
    }
    let last = &path[path.len() - 1];
    match value {
        Some(v) => at.set_field(last, v),
        None => at.clear_field(last),
    }
    out
}

fn display(path: &[FieldDescriptor]) -> String {
    path.iter().map(|f| f.name()).collect::<Vec<_>>().join(".")
}

impl Contract {
    /// Every rule of every request field (and message, and oneof), as (owner, rule name).
    fn all_rules(&self) -> BTreeSet<(String, &'static str)> {
        let mut out = BTreeSet::new();
        for message in self
            .pool
            .all_messages()
            .filter(|m| m.package_name() == PACKAGE)
        {
            for rule in self.cel_rules(&message) {
                out.insert((message.full_name().to_owned(), rule.id));
            }
            for oneof in message.oneofs().filter(|o| self.oneof_required(o)) {
                out.insert((oneof.full_name().to_owned(), "oneof.required"));
            }
            for field in message.fields() {
                let rules = self.rules(&field);
                let owner = field.full_name().to_owned();
                if rules.required {
                    out.insert((owner.clone(), "required"));
                }
                for check in &rules.checks {
                    out.insert((owner.clone(), check.name()));
                }
            }
        }
        out
    }

    /// Compares, for one request, what the annotations refuse with what the server names.
    fn compare(&self, request: &DynamicMessage, what: &str, run: &mut Run) {
        let mut broken = Vec::new();
        self.broken(request, "", &mut broken);
        let expected: BTreeSet<String> = broken.iter().map(|(p, _, _)| p.clone()).collect();
        run.exercised
            .extend(broken.into_iter().map(|(_, owner, rule)| (owner, rule)));
        let actual = server_verdict(request);
        run.probes += 1;
        if expected != actual {
            run.mismatches.push(format!(
                "{what}: the annotations refuse {expected:?}, the server {actual:?}"
            ));
        }
    }
}

/// What a comparison run found.
#[derive(Default)]
struct Run {
    probes: usize,
    mismatches: Vec<String>,
    /// Every (owner, rule) that some probe broke.
    exercised: BTreeSet<(String, &'static str)>,
}

#[test]
fn every_annotated_rule_is_what_the_server_checks() {
    let contract = Contract::load();
    let mut run = Run::default();
    for (type_name, bytes) in samples() {
        let desc = contract.message(type_name);
        let valid = DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("sample");
        let mut broken = Vec::new();
        contract.broken(&valid, "", &mut broken);
        assert!(
            broken.is_empty(),
            "the {type_name} sample breaks {broken:?}"
        );
        assert!(
            server_verdict(&valid).is_empty(),
            "the server refuses the {type_name} sample"
        );
        // Each oneof with none of its fields set.
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            let mut none = valid.clone();
            for f in oneof.fields() {
                none.clear_field(&f);
            }
            let what = format!("{type_name}.{} unset", oneof.name());
            contract.compare(&none, &what, &mut run);
        }
        // Each field in turn.
        let mut paths = Vec::new();
        field_paths(&valid, &[], &mut paths);
        for path in paths {
            let field = path.last().expect("path").clone();
            let mut parent = valid.clone();
            for f in &path[..path.len() - 1] {
                parent = parent.get_field(f).as_message().expect("message").clone();
            }
            let base = parent.get_field(&field).into_owned();
            for value in probes(&field, contract.rules(&field), &base) {
                let what = format!(
                    "{type_name}.{} = {}",
                    display(&path),
                    value
                        .as_ref()
                        .map_or("(absent)".to_owned(), |v| format!("{v:?}"))
                );
                contract.compare(&with(&valid, &path, value), &what, &mut run);
            }
        }
    }
    assert!(
        run.mismatches.is_empty(),
        "{} of {} probes disagree:\n{}",
        run.mismatches.len(),
        run.probes,
        run.mismatches
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let rules = contract.all_rules();
    let unexercised: Vec<_> = rules.difference(&run.exercised).collect();
    assert!(
        unexercised.is_empty(),
        "no probe broke these rules, so they were not compared with the server: {unexercised:?}"
    );
    // Not vacuous: the rules were read from the served descriptor set.
    assert!(rules.len() >= 60, "only {} rules found", rules.len());
    println!(
        "field rules: {} annotated rules, {} probes: the annotations and the server agree",
        rules.len(),
        run.probes
    );
}

#[test]
fn every_field_says_its_behavior_and_required_means_the_zero_value_is_refused() {
    let contract = Contract::load();
    let service = contract
        .pool
        .get_service_by_name(SERVICE_NAME)
        .expect("service");
    let mut problems = Vec::new();
    let reach = |roots: Vec<MessageDescriptor>| {
        let mut seen = BTreeMap::new();
        let mut todo = roots;
        while let Some(m) = todo.pop() {
            // Map entries are not messages of the contract: their keys and values are the map's.
            if m.package_name() != PACKAGE
                || m.is_map_entry()
                || seen.insert(m.full_name().to_owned(), m.clone()).is_some()
            {
                continue;
            }
            for f in m.fields() {
                if let Kind::Message(n) = f.kind() {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let requests = reach(service.methods().map(|m| m.input()).collect());
    let responses = reach(service.methods().map(|m| m.output()).collect());
    for name in requests.keys() {
        assert!(
            !responses.contains_key(name),
            "{name} is both request and response"
        );
    }
    for message in responses.values() {
        for field in message.fields() {
            if contract.behavior(&field) != [OUTPUT_ONLY] {
                problems.push(format!("{}: not OUTPUT_ONLY", field.full_name()));
            }
            let rules = contract.rules(&field);
            if rules.required || !rules.checks.is_empty() {
                problems.push(format!("{}: rules on a response field", field.full_name()));
            }
        }
    }
    for message in requests.values() {
        for field in message.fields() {
            let behavior = contract.behavior(&field);
            // The zero value (absent, for a message) against the field's own rules.
            let mut probe = DynamicMessage::new(message.clone());
            if field.containing_oneof().is_none() {
                probe.clear_field(&field);
            }
            let rules = contract.rules(&field);
            let zero_refused = rules.required
                || (!rules.ignore_if_zero
                    && !matches!(field.kind(), Kind::Message(_))
                    && rules
                        .checks
                        .iter()
                        .any(|c| !c.holds(&probe.get_field(&field))));
            let in_oneof = field.containing_oneof().is_some();
            match behavior.as_slice() {
                [REQUIRED] if zero_refused && !in_oneof => {}
                [OPTIONAL] if !zero_refused => {}
                other => problems.push(format!(
                    "{}: field_behavior {other:?}, but the rules {} the zero value",
                    field.full_name(),
                    if zero_refused { "refuse" } else { "accept" }
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "field behavior: {} request and {} response messages annotated",
        requests.len(),
        responses.len()
    );
}
