//! The edits a pass makes to a graph, collected while it reads the graph and applied at once
//! at the end: nodes inserted before or after a node, nodes replacing one, nodes removed,
//! inputs and outputs renamed; initializers dropped and added.

use crate::onnx::{Namer, pb};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A graph's pending edits, by index of the node or initializer they concern (indices of the
/// graph as it was when the rewrite began), and the namer that gives new tensors and nodes
/// names the graph does not use yet.
pub(crate) struct Rewrite {
    pub namer: Namer,
    /// Initializers added, after the ones kept.
    pub new_inits: Vec<pb::TensorProto>,
    /// Initializers removed.
    pub drop_inits: HashSet<usize>,
    /// Nodes inserted in front of a node (node 0: in front of the graph).
    pub before: BTreeMap<usize, Vec<pb::NodeProto>>,
    /// Nodes inserted after a node.
    pub after: BTreeMap<usize, Vec<pb::NodeProto>>,
    /// Nodes taking a node's place.
    pub replace: HashMap<usize, Vec<pb::NodeProto>>,
    /// Nodes removed.
    pub removed: HashSet<usize>,
    /// (node, input slot, new name), applied in order.
    pub input_renames: Vec<(usize, usize, String)>,
    /// (node, output slot, new name), applied in order.
    pub output_renames: Vec<(usize, usize, String)>,
}

impl Rewrite {
    pub fn new(graph: &pb::GraphProto) -> Self {
        Self {
            namer: Namer::new(graph),
            new_inits: Vec::new(),
            drop_inits: HashSet::new(),
            before: BTreeMap::new(),
            after: BTreeMap::new(),
            replace: HashMap::new(),
            removed: HashSet::new(),
            input_renames: Vec::new(),
            output_renames: Vec::new(),
        }
    }

    /// A name not used in the graph nor given out before, from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        self.namer.fresh(base)
    }

    /// Whether an initializer of that name was added.
    pub fn adds_init(&self, name: &str) -> bool {
        self.new_inits
            .iter()
            .any(|t| t.name.as_deref() == Some(name))
    }

    /// Applies the edits: renames first, then the nodes in their new order, then the
    /// initializers (the kept ones in their order, the new ones after them).
    pub fn apply(mut self, graph: &mut pb::GraphProto) {
        for (ni, slot, name) in self.input_renames.drain(..) {
            graph.node[ni].input[slot] = name;
        }
        for (ni, slot, name) in self.output_renames.drain(..) {
            graph.node[ni].output[slot] = name;
        }
        let old_nodes = std::mem::take(&mut graph.node);
        for (i, node) in old_nodes.into_iter().enumerate() {
            if let Some(pre) = self.before.remove(&i) {
                graph.node.extend(pre);
            }
            if let Some(nodes) = self.replace.remove(&i) {
                graph.node.extend(nodes);
            } else if !self.removed.contains(&i) {
                graph.node.push(node);
            }
            if let Some(post) = self.after.remove(&i) {
                graph.node.extend(post);
            }
        }
        let old_inits = std::mem::take(&mut graph.initializer);
        graph.initializer = old_inits
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.drop_inits.contains(i))
            .map(|(_, t)| t)
            .collect();
        graph.initializer.extend(self.new_inits);
    }
}
