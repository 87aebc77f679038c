"""Generation: a request planned (`plan`), decoded note by note (`decode`, with `grammar`,
`sampling`, `ending` and the network's `batch_decoder`), and turned into pieces (`continuation`)."""
