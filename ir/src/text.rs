//! The readable text form of a graph: printed and parsed back.
