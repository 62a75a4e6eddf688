//! A doubly linked list over `1..=n` with O(1) removal and re-insertion in
//! LIFO order ("dancing links"), the event list of the Wing & Gong search.

#[derive(Clone, Debug)]
pub(crate) struct Links {
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl Links {
    /// The list `1, 2, ..., n` between the head sentinel 0 and the tail
    /// sentinel `n + 1`.
    pub(crate) fn new(n: usize) -> Self {
        let n = u32::try_from(n).expect("too many list nodes");
        Links {
            next: (1..=n + 1).chain([n + 1]).collect(),
            prev: [0].into_iter().chain(0..=n).collect(),
        }
    }

    /// The tail sentinel: `next` of the last node.
    pub(crate) fn tail(&self) -> u32 {
        (self.next.len() - 1) as u32
    }

    /// The first node still in the list, or the tail if it is empty.
    pub(crate) fn first(&self) -> u32 {
        self.next[0]
    }

    pub(crate) fn next(&self, node: u32) -> u32 {
        self.next[node as usize]
    }

    /// Removes `node` from the list; it remembers its neighbours.
    pub(crate) fn lift(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        self.prev[next as usize] = prev;
    }

    /// Puts `node` back; nodes must be put back in the reverse order of
    /// their removal.
    pub(crate) fn unlift(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        self.prev[next as usize] = node;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(links: &Links) -> Vec<u32> {
        let mut out = Vec::new();
        let mut node = links.first();
        while node != links.tail() {
            out.push(node);
            node = links.next(node);
        }
        out
    }

    #[test]
    fn lift_and_unlift() {
        let mut links = Links::new(4);
        assert_eq!(contents(&links), [1, 2, 3, 4]);
        links.lift(1);
        links.lift(3);
        assert_eq!(contents(&links), [2, 4]);
        links.lift(4);
        links.lift(2);
        assert_eq!(contents(&links), [] as [u32; 0]);
        assert_eq!(links.first(), links.tail());
        links.unlift(2);
        links.unlift(4);
        links.unlift(3);
        assert_eq!(contents(&links), [2, 3, 4]);
        links.unlift(1);
        assert_eq!(contents(&links), [1, 2, 3, 4]);
    }

    #[test]
    fn empty() {
        let links = Links::new(0);
        assert_eq!(links.first(), links.tail());
    }
}
