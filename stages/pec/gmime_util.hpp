// GMime 3 process setup and GObject ownership, shared by the message readers and builders.
#pragma once

#include <glib-object.h>

#include <memory>

namespace pecd::pec {

// Calls g_mime_init() exactly once per process; cheap to call before every GMime use.
void ensure_gmime();

struct GObjectUnref {
    void operator()(void* object) const noexcept {
        if (object != nullptr) g_object_unref(object);
    }
};

// Owning pointer for anything that is released with g_object_unref (GMimeMessage, GMimeStream,
// ...).
template <class T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

}  // namespace pecd::pec
