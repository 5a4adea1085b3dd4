//! Request validation in FastAPI's shape: every problem of a request is
//! reported at once as `{"detail": [{"type", "loc", "msg", "input"}, ...]}`
//! with pydantic v2's error types and messages, which Kloigos clients parse.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// One problem with a request.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ValidationError {
    #[serde(rename = "type")]
    pub kind: String,
    /// Where the problem is: `["body", "cpu_ranges", 1]`, `["query", "cpu_count"]`.
    pub loc: Vec<Value>,
    pub msg: String,
    /// The offending input, of any JSON type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// `422 Unprocessable Entity`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct HttpValidationError {
    pub detail: Vec<ValidationError>,
}

impl ValidationError {
    pub fn new(kind: &str, loc: Vec<Value>, msg: impl Into<String>, input: Option<Value>) -> Self {
        Self {
            kind: kind.to_string(),
            loc,
            msg: msg.into(),
            input,
        }
    }
}

fn loc(parts: &[&str]) -> Vec<Value> {
    parts.iter().map(|p| Value::from(*p)).collect()
}

/// Reads a JSON request body field by field, collecting every problem.
pub struct BodyReader {
    object: Map<String, Value>,
    pub errors: Vec<ValidationError>,
}

impl BodyReader {
    /// Parses the body; a body that is not a JSON object is one error.
    pub fn parse(bytes: &[u8]) -> Result<BodyReader, Vec<ValidationError>> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![ValidationError::new(
                "missing",
                loc(&["body"]),
                "Field required",
                Some(Value::Null),
            )]);
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![ValidationError::new(
                "json_invalid",
                vec![Value::from("body"), Value::from(e.column())],
                format!("JSON decode error: {e}"),
                Some(Value::Object(Map::new())),
            )]
        })?;
        match value {
            Value::Object(object) => Ok(BodyReader {
                object,
                errors: Vec::new(),
            }),
            other => Err(vec![ValidationError::new(
                "model_attributes_type",
                loc(&["body"]),
                "Input should be a valid dictionary or object to extract fields from",
                Some(other),
            )]),
        }
    }

    fn missing(&mut self, field: &str) {
        self.errors.push(ValidationError::new(
            "missing",
            loc(&["body", field]),
            "Field required",
            Some(Value::Object(self.object.clone())),
        ));
    }

    fn wrong(&mut self, field: &str, kind: &str, msg: &str, input: &Value) {
        self.errors.push(ValidationError::new(
            kind,
            loc(&["body", field]),
            msg,
            Some(input.clone()),
        ));
    }

    /// A field that must be present; `null` is allowed when `nullable`.
    fn field(&mut self, field: &str, nullable: bool) -> Option<Value> {
        match self.object.get(field) {
            None => {
                self.missing(field);
                None
            }
            Some(Value::Null) if nullable => None,
            Some(value) => Some(value.clone()),
        }
    }

    pub fn required_string(&mut self, field: &str) -> String {
        match self.field(field, false) {
            Some(Value::String(s)) => s,
            Some(other) => {
                self.wrong(
                    field,
                    "string_type",
                    "Input should be a valid string",
                    &other,
                );
                String::new()
            }
            None => String::new(),
        }
    }

    /// A field that may be absent or `null`.
    pub fn optional_string(&mut self, field: &str) -> Option<String> {
        match self.object.get(field) {
            None | Some(Value::Null) => None,
            Some(_) => Some(self.required_string(field)),
        }
    }

    pub fn optional_int(&mut self, field: &str) -> Option<i64> {
        let value = self.object.get(field).cloned()?;
        match parse_int(&value) {
            Ok(n) => n,
            Err((kind, msg)) => {
                self.wrong(field, kind, msg, &value);
                None
            }
        }
    }

    pub fn required_string_list(&mut self, field: &str) -> Vec<String> {
        match self.field(field, false) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.errors.push(ValidationError::new(
                            "string_type",
                            vec![Value::from("body"), Value::from(field), Value::from(i)],
                            "Input should be a valid string",
                            Some(other.clone()),
                        )),
                    }
                }
                out
            }
            Some(other) => {
                self.wrong(field, "list_type", "Input should be a valid list", &other);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    pub fn optional_string_list(&mut self, field: &str) -> Vec<String> {
        match self.object.get(field) {
            None | Some(Value::Null) => Vec::new(),
            Some(_) => self.required_string_list(field),
        }
    }

    /// A required field whose value is an object or `null`.
    pub fn required_nullable_object(&mut self, field: &str) -> Option<Value> {
        match self.field(field, true) {
            Some(value @ Value::Object(_)) => Some(value),
            Some(other) => {
                self.wrong(
                    field,
                    "dict_type",
                    "Input should be a valid dictionary",
                    &other,
                );
                None
            }
            None => None,
        }
    }

    pub fn finish(self) -> Result<(), Vec<ValidationError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

type IntError = (&'static str, &'static str);

/// Pydantic's lax integer: an integer, a float without fraction, or a string
/// of digits. `null` is no value.
fn parse_int(value: &Value) -> Result<Option<i64>, IntError> {
    const INT: &str = "Input should be a valid integer";
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if n
                .as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15)
            {
                Ok(n.as_f64().map(|f| f as i64))
            } else if n.as_f64().is_some_and(|f| f.fract() != 0.0) {
                Err((
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ))
            } else {
                Err(("int_type", INT))
            }
        }
        Value::String(s) => parse_int_text(s).map(Some),
        _ => Err(("int_type", INT)),
    }
}

pub fn parse_int_text(text: &str) -> Result<i64, IntError> {
    text.trim().parse::<i64>().map_err(|_| {
        (
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )
    })
}

/// Pydantic's lax boolean from a query string.
pub fn parse_bool_text(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// A query parameter error.
pub fn query_error(name: &str, kind: &str, msg: impl Into<String>, input: &str) -> ValidationError {
    ValidationError::new(kind, loc(&["query", name]), msg, Some(Value::from(input)))
}

/// An app-level validation failure of a body field.
pub fn value_error(field: Option<&str>, message: &str) -> ValidationError {
    let mut at = vec![Value::from("body")];
    at.extend(field.map(Value::from));
    ValidationError::new("value_error", at, format!("Value error, {message}"), None)
}

/// The app's problems with a request's values, as FastAPI lists them.
pub fn value_errors(problems: Vec<tessera_app::Error>) -> Vec<ValidationError> {
    problems
        .into_iter()
        .map(|problem| match problem {
            tessera_app::Error::Invalid { field, message } => value_error(field, &message),
            other => value_error(None, &other.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_problem() {
        let mut body = BodyReader::parse(br#"{"ip": 5, "cpu_ranges": ["0-3", 7], "zone": "z"}"#)
            .unwrap_or_else(|_| panic!("an object"));
        body.required_string("ip");
        body.required_string("hostname");
        body.required_string_list("cpu_ranges");
        body.required_string("zone");
        let errors = body.finish().expect_err("invalid");
        let summary: Vec<(String, Value)> = errors
            .iter()
            .map(|e| (e.kind.clone(), json!(e.loc)))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("string_type".to_string(), json!(["body", "ip"])),
                ("missing".to_string(), json!(["body", "hostname"])),
                ("string_type".to_string(), json!(["body", "cpu_ranges", 1])),
            ]
        );
    }

    #[test]
    fn lax_integers_like_pydantic() {
        assert_eq!(parse_int(&json!(4)), Ok(Some(4)));
        assert_eq!(parse_int(&json!(4.0)), Ok(Some(4)));
        assert_eq!(parse_int(&json!("4")), Ok(Some(4)));
        assert_eq!(parse_int(&json!(null)), Ok(None));
        assert_eq!(
            parse_int(&json!(4.5)).map_err(|e| e.0),
            Err("int_from_float")
        );
        assert_eq!(
            parse_int(&json!("four")).map_err(|e| e.0),
            Err("int_parsing")
        );
        assert_eq!(parse_int(&json!([4])).map_err(|e| e.0), Err("int_type"));
    }

    #[test]
    fn bodies_that_are_not_objects() {
        let kinds = |b: &[u8]| BodyReader::parse(b).err().map(|e| e[0].kind.clone());
        assert_eq!(kinds(b""), Some("missing".into()));
        assert_eq!(kinds(b"{"), Some("json_invalid".into()));
        assert_eq!(kinds(b"[1]"), Some("model_attributes_type".into()));
        assert_eq!(kinds(b"{}"), None);
    }
}
