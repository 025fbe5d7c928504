//! Role inheritance: the graph of "members of role R also hold role S" edges and the transitive
//! closure of a subscriber's direct roles over it. Pure; loading the edges is `sessions`' job.

use std::collections::{BTreeSet, HashMap};

use super::access::role_name;

/// Role inheritance edges, indexed by the inheriting role. Names are kept without `role:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleGraph {
    inherits: HashMap<String, Vec<String>>,
}

impl RoleGraph {
    /// From `(role, inherits)` edges: members of `role` also hold `inherits`. A `role:` prefix on
    /// either name is stripped; duplicate edges and edges with an empty name are dropped.
    pub fn new(edges: impl IntoIterator<Item = (String, String)>) -> RoleGraph {
        let mut inherits: HashMap<String, Vec<String>> = HashMap::new();
        for (role, parent) in edges {
            let (role, parent) = (role_name(&role), role_name(&parent));
            if role.is_empty() || parent.is_empty() {
                continue;
            }
            let parents = inherits.entry(role.to_string()).or_default();
            if !parents.iter().any(|p| p == parent) {
                parents.push(parent.to_string());
            }
        }
        RoleGraph { inherits }
    }

    /// Number of distinct edges.
    pub fn edge_count(&self) -> usize {
        self.inherits.values().map(Vec::len).sum()
    }

    /// The direct roles plus every role they inherit, transitively; sorted, de-duplicated, without
    /// the `role:` prefix. Roles the graph does not know are kept (they just inherit nothing).
    pub fn closure(&self, direct: &[String]) -> Vec<String> {
        // The visited set doubles as the cycle guard: a role is expanded only the first time.
        let mut held = BTreeSet::new();
        let mut pending: Vec<&str> = direct.iter().map(|r| role_name(r)).filter(|r| !r.is_empty()).collect();
        while let Some(role) = pending.pop() {
            if !held.insert(role) {
                continue;
            }
            if let Some(parents) = self.inherits.get(role) {
                pending.extend(parents.iter().map(String::as_str).filter(|p| !held.contains(p)));
            }
        }
        held.into_iter().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> RoleGraph {
        RoleGraph::new(edges.iter().map(|(r, i)| (r.to_string(), i.to_string())))
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn chain() {
        let g = graph(&[("Helper", "Moderator"), ("Moderator", "Admin")]);
        assert_eq!(g.closure(&roles(&["Helper"])), roles(&["Admin", "Helper", "Moderator"]));
        assert_eq!(g.closure(&roles(&["Moderator"])), roles(&["Admin", "Moderator"]));
        assert_eq!(g.closure(&roles(&["Admin"])), roles(&["Admin"]));
        assert_eq!(g.closure(&[]), Vec::<String>::new());
    }

    #[test]
    fn diamond() {
        let g = graph(&[("Base", "Left"), ("Base", "Right"), ("Left", "Top"), ("Right", "Top")]);
        assert_eq!(g.closure(&roles(&["Base"])), roles(&["Base", "Left", "Right", "Top"]));
        assert_eq!(g.closure(&roles(&["Right", "Left"])), roles(&["Left", "Right", "Top"]));
    }

    #[test]
    fn cycle() {
        let g = graph(&[("A", "B"), ("B", "A"), ("B", "C")]);
        assert_eq!(g.closure(&roles(&["A"])), roles(&["A", "B", "C"]));
        assert_eq!(g.closure(&roles(&["B"])), roles(&["A", "B", "C"]));
        assert_eq!(g.closure(&roles(&["C"])), roles(&["C"]));
    }

    #[test]
    fn self_loop() {
        let g = graph(&[("A", "A"), ("A", "B")]);
        assert_eq!(g.closure(&roles(&["A"])), roles(&["A", "B"]));
    }

    #[test]
    fn unknown_roles_are_kept_and_duplicates_folded() {
        let g = graph(&[("A", "B")]);
        assert_eq!(g.closure(&roles(&["Z", "A", "Z", "B"])), roles(&["A", "B", "Z"]));
        assert_eq!(RoleGraph::default().closure(&roles(&["X"])), roles(&["X"]));
    }

    #[test]
    fn prefix_is_stripped_everywhere() {
        let g = graph(&[("role:A", "B"), ("A", "role:C"), ("role:C", "role:D"), ("", "E"), ("F", "role:")]);
        assert_eq!(g.closure(&roles(&["role:A"])), roles(&["A", "B", "C", "D"]));
        assert_eq!(g.closure(&roles(&["A", "role:A"])), roles(&["A", "B", "C", "D"]));
        assert_eq!(g.closure(&roles(&["role:", "F"])), roles(&["F"]));
        assert_eq!(g.edge_count(), 3);
    }

    #[test]
    fn duplicate_edges_are_folded() {
        let g = graph(&[("A", "B"), ("A", "role:B"), ("role:A", "B")]);
        assert_eq!(g.edge_count(), 1);
    }
}
