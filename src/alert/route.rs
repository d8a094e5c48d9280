//! Routing: who hears of an alert. The rule's departments, plus the key-account managers for key
//! accounts (segments vip, enterprise, government), in a fixed order — and for those accounts any
//! barring advice (`bar*`, `soft_bar`, `suspend*`, `block*`) becomes `kam_review`: a key-account manager
//! talks to the customer before anything is cut off.

use crate::record::{Department, Segment};

/// An action that cuts service.
pub fn is_barring(action: &str) -> bool {
    action.starts_with("bar")
        || action == "soft_bar"
        || action.starts_with("suspend")
        || action.starts_with("block")
}

/// The departments an alert goes to and the actions it recommends, given the account's segment.
pub fn route(
    departments: &[Department],
    mut actions: Vec<String>,
    segment: Option<Segment>,
) -> (Vec<Department>, Vec<String>) {
    let mut to = departments.to_vec();
    if segment.is_some_and(Segment::is_key_account) {
        to.push(Department::KeyAccounts);
        for a in actions.iter_mut().filter(|a| is_barring(a)) {
            *a = "kam_review".into();
        }
    }
    to.sort();
    to.dedup();
    let mut seen = std::collections::HashSet::new();
    actions.retain(|a| seen.insert(a.clone()));
    (to, actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_accounts_get_a_manager_and_a_review_instead_of_a_bar() {
        let (to, actions) = route(
            &[Department::Fraud],
            vec![
                "bar_international".into(),
                "notify".into(),
                "soft_bar".into(),
            ],
            Some(Segment::Vip),
        );
        assert_eq!(to, [Department::Fraud, Department::KeyAccounts]);
        assert_eq!(actions, ["kam_review", "notify"]);
        let (to, actions) = route(
            &[Department::Care, Department::Fraud],
            vec!["bar_international".into()],
            Some(Segment::Consumer),
        );
        assert_eq!(to, [Department::Fraud, Department::Care]);
        assert_eq!(actions, ["bar_international"]);
    }
}
