"""The rules, and the cache operations a change asks for.

The rules file (model and loader), the planner (pure: change + rules -> cache operations),
and the route of one Kafka message through decode and plan.

May import: core, source.
"""
