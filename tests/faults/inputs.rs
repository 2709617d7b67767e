//! Placeholder: filled by the engineer who owns this group.
