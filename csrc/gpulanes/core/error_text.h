// Exception messages as users and clients see them.
#pragma once

#include <cstddef>
#include <exception>
#include <string>

namespace gpulanes {

// What an exception says, for a user: a c10::Error's message without its C++ backtrace (the
// frames torch appends), at most `max_chars`. Every message built from a torch exception that
// reaches a caller or a client goes through this.
std::string error_text(const std::exception& e, std::size_t max_chars = 2000);

}  // namespace gpulanes
