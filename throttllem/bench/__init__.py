"""`throttllem bench`: benchmarks that print a table and write JSON, and the slow
reference implementations they (and the tests) measure the fast code against."""
