//! Parse `where` JSON → a compiled query, and the matcher that evaluates it on one object.
//! Pure and total: compiling refuses what it cannot evaluate (code 102, naming the problem);
//! matching never fails and never panics.
//!
//! Semantics follow MongoDB where Parse's behaviour is an accident of JavaScript (see the
//! "Query semantics" table in README.md): comparisons only between values of one kind (numbers,
//! strings, dates), a missing field never satisfies a comparison, array fields match when any
//! element does, `{field: null}` matches null or missing.

mod canonical;
mod operand;

pub use canonical::canonical_key;

use serde_json::{Map, Value};

use operand::{Operand, Ordering};

/// Limits applied while compiling, so a hostile `where` cannot cost unbounded work.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_in_list: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_depth: 10, max_in_list: 1_000 }
    }
}

/// A `where` that cannot be subscribed to; the message goes to the client with code 102.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled `where`: a conjunction of nodes.
#[derive(Debug, Clone)]
pub struct Query {
    root: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Vec<Node>>),
    Or(Vec<Vec<Node>>),
    Nor(Vec<Vec<Node>>),
    Field { path: Vec<String>, tests: Vec<Test> },
}

#[derive(Debug, Clone)]
enum Test {
    /// Implicit equality and `$eq`: the value, or an element of an array value, equals.
    Equals(Operand),
    NotEquals(Operand),
    Compare(Ordering, Operand),
    In(Vec<Operand>),
    NotIn(Vec<Operand>),
    Exists(bool),
}

/// Operators of the Parse query language this build does not evaluate yet: refused by name
/// rather than accepted as a subscription that never fires.
const NOT_YET_SUPPORTED: &[&str] = &[
    "$regex",
    "$options",
    "$all",
    "$containedBy",
    "$nearSphere",
    "$maxDistance",
    "$maxDistanceInRadians",
    "$maxDistanceInMiles",
    "$maxDistanceInKilometers",
    "$within",
    "$geoWithin",
    "$geoIntersects",
    "$select",
    "$dontSelect",
    "$inQuery",
    "$notInQuery",
    "$relatedTo",
    "$text",
    "$elemMatch",
    "$relativeTime",
];

impl Query {
    pub fn compile(where_: &Map<String, Value>, limits: QueryLimits) -> Result<Query, QueryError> {
        Ok(Query { root: compile_conjunction(where_, limits, 1)? })
    }

    /// Whether `object` (a Parse object as sent to clients) satisfies the query.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        all(&self.root, object)
    }
}

fn compile_conjunction(where_: &Map<String, Value>, limits: QueryLimits, depth: usize) -> Result<Vec<Node>, QueryError> {
    if depth > limits.max_depth {
        return Err(QueryError(format!(
            "Query condition nesting depth exceeds maximum allowed depth of {}",
            limits.max_depth
        )));
    }
    let mut nodes = Vec::with_capacity(where_.len());
    for (key, constraint) in where_ {
        let node = match key.as_str() {
            "$or" | "$and" | "$nor" => {
                let Some(branches) = constraint.as_array().filter(|a| !a.is_empty()) else {
                    return Err(QueryError(format!("{key} must be a non-empty array")));
                };
                let mut compiled = Vec::with_capacity(branches.len());
                for branch in branches {
                    let Some(branch) = branch.as_object() else {
                        return Err(QueryError(format!("{key} must be an array of objects")));
                    };
                    compiled.push(compile_conjunction(branch, limits, depth + 1)?);
                }
                match key.as_str() {
                    "$or" => Node::Or(compiled),
                    "$and" => Node::And(compiled),
                    _ => Node::Nor(compiled),
                }
            }
            k if k.starts_with('$') => return Err(unsupported(k)),
            field => compile_field(field, constraint, limits)?,
        };
        nodes.push(node);
    }
    Ok(nodes)
}

fn unsupported(operator: &str) -> QueryError {
    if NOT_YET_SUPPORTED.contains(&operator) {
        QueryError(format!("Unsupported query operator: {operator}"))
    } else {
        QueryError(format!("Invalid query operator: {operator}"))
    }
}

fn compile_field(field: &str, constraint: &Value, limits: QueryLimits) -> Result<Node, QueryError> {
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(QueryError(format!("Invalid field name: {field:?}")));
    }
    let path: Vec<String> = field.split('.').map(str::to_string).collect();
    let operators = match constraint {
        Value::Object(map) if !map.is_empty() && !map.contains_key("__type") => {
            let dollar = map.keys().filter(|k| k.starts_with('$')).count();
            if dollar == 0 {
                None
            } else if dollar < map.len() {
                return Err(QueryError(format!("Invalid constraint on {field}: operators mixed with plain keys")));
            } else {
                Some(map)
            }
        }
        _ => None,
    };
    let Some(operators) = operators else {
        let operand = Operand::decode(constraint).map_err(|e| QueryError(format!("{field}: {e}")))?;
        return Ok(Node::Field { path, tests: vec![Test::Equals(operand)] });
    };
    let mut tests = Vec::with_capacity(operators.len());
    for (op, operand) in operators {
        let decode = |v: &Value| Operand::decode(v).map_err(|e| QueryError(format!("{field}.{op}: {e}")));
        let test = match op.as_str() {
            "$eq" => Test::Equals(decode(operand)?),
            "$ne" => Test::NotEquals(decode(operand)?),
            "$lt" => Test::Compare(Ordering::Less, decode(operand)?),
            "$lte" => Test::Compare(Ordering::LessOrEqual, decode(operand)?),
            "$gt" => Test::Compare(Ordering::Greater, decode(operand)?),
            "$gte" => Test::Compare(Ordering::GreaterOrEqual, decode(operand)?),
            "$in" | "$nin" => {
                let Some(list) = operand.as_array() else {
                    return Err(QueryError(format!("{field}.{op} must be an array")));
                };
                if list.len() > limits.max_in_list {
                    return Err(QueryError(format!(
                        "{field}.{op} has {} values, more than the limit of {}",
                        list.len(),
                        limits.max_in_list
                    )));
                }
                let list = list.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                if op == "$in" {
                    Test::In(list)
                } else {
                    Test::NotIn(list)
                }
            }
            "$exists" => match operand {
                Value::Bool(b) => Test::Exists(*b),
                _ => return Err(QueryError(format!("{field}.$exists must be a boolean"))),
            },
            other => return Err(unsupported(other)),
        };
        tests.push(test);
    }
    Ok(Node::Field { path, tests })
}

fn all(nodes: &[Node], object: &Map<String, Value>) -> bool {
    nodes.iter().all(|node| node_matches(node, object))
}

fn node_matches(node: &Node, object: &Map<String, Value>) -> bool {
    match node {
        Node::And(branches) => branches.iter().all(|b| all(b, object)),
        Node::Or(branches) => branches.iter().any(|b| all(b, object)),
        Node::Nor(branches) => !branches.iter().any(|b| all(b, object)),
        Node::Field { path, tests } => {
            let value = resolve(object, path);
            tests.iter().all(|test| test_matches(test, value))
        }
    }
}

/// The value at a dotted path; a missing or non-object parent means a missing value.
fn resolve<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = object.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

/// The value itself, then (for arrays) each element: the candidates "any element" semantics
/// tests against.
fn candidates(value: &Value) -> impl Iterator<Item = &Value> {
    std::iter::once(value).chain(value.as_array().into_iter().flatten())
}

fn test_matches(test: &Test, value: Option<&Value>) -> bool {
    match test {
        Test::Equals(operand) => equals(operand, value),
        Test::NotEquals(operand) => !equals(operand, value),
        Test::Compare(ordering, operand) => {
            value.is_some_and(|v| candidates(v).any(|c| operand.compare(c).is_some_and(|o| ordering.accepts(o))))
        }
        Test::In(list) => value.is_some_and(|v| list.iter().any(|operand| candidates(v).any(|c| operand.equals(c)))),
        Test::NotIn(list) => !value.is_some_and(|v| list.iter().any(|operand| candidates(v).any(|c| operand.equals(c)))),
        Test::Exists(expected) => value.is_some() == *expected,
    }
}

fn equals(operand: &Operand, value: Option<&Value>) -> bool {
    match value {
        None => matches!(operand, Operand::Null),
        Some(v) => candidates(v).any(|c| operand.equals(c)),
    }
}

#[cfg(test)]
mod tests;
