"""Edge-cloud collaborative inference: split points, profiling, the split planner, the tail
server and the edge client over an emulated link. Import the submodules you need."""
